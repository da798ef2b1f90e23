package firewall

import (
	"errors"
	"fmt"
	"net/netip"
	"slices"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"go.uber.org/zap"
)

// tableOwner is NFT_TABLE_F_OWNER (Linux 5.12): only the netlink socket
// that made such a table may change it, so vtepd cannot add rules to it.
const tableOwner = 0x2

// nftForward puts the forward rules at the top of every forward-hook filter
// base chain of the ip and inet families, marked by their comment.
//
// Not into a table of vtepd's own: nftables runs every base chain on a hook
// in turn, an accept ends only the chain it is in, and a drop anywhere is
// final. An accept in vtepd's own chain would leave another table's policy
// drop, or its final reject (firewalld's forward chain has policy accept and
// ends in a reject), exactly as it was; and where no other chain drops,
// there is nothing to accept. The rules must be in the chains that drop,
// ahead of their drops, as the iptables rules are at the top of FORWARD.
// Every filter chain on the hook gets them, whatever its policy, for the
// same reason: policy accept does not mean nothing in it drops.
//
// Chains of tables iptables-nft manages are left to the iptables backend
// when it runs beside this one (skip); so are tables another program owns
// (NFT_TABLE_F_OWNER), which refuse others' rules; a warning says so once.
type nftForward struct {
	log     *zap.Logger
	nft     *nftables.Conn
	network netip.Prefix
	skip    func(family, table string) bool
	warned  map[string]bool // owned tables warned about
}

func newNFTForward(log *zap.Logger, p place, network netip.Prefix, skip func(family, table string) bool) (*nftForward, error) {
	c, err := p.nft()
	if err != nil {
		return nil, err
	}
	return &nftForward{log: log, nft: c, network: network, skip: skip, warned: map[string]bool{}}, nil
}

// managedByIPTablesNFT tells the tables iptables-nft writes its own way
// (xtables matches, its own comment format): the iptables backend looks
// after them.
func managedByIPTablesNFT(family, table string) bool {
	return family == "ip" && slices.Contains([]string{"filter", "mangle", "raw", "security", "nat"}, table)
}

func (b *nftForward) describe() string {
	if b.skip != nil {
		return "nftables (forward chains other than iptables-nft's)"
	}
	return "nftables (every forward chain)"
}

func (b *nftForward) rules(f nftables.TableFamily) []nftRule {
	var pre []expr.Any
	if f == nftables.TableFamilyINet {
		pre = ipv4Only()
	}
	from, to := forwardComments(b.network)
	return []nftRule{
		{from, cat(pre, ip(offSaddr, b.network, false), one(counter), one(accept))},
		{to, cat(pre, ip(offDaddr, b.network, false), one(counter), one(accept))},
	}
}

// nftChain is a forward chain with vtepd's rules as they should be and as
// they are.
type nftChain struct {
	chain *nftables.Chain
	want  []nftRule
	ours  []*nftables.Rule // rules with one of vtepd's comments
}

// diff says which wanted rules are not there exactly, and which of vtepd's
// rules are not wanted (duplicates, or changed by someone).
func (c nftChain) diff() (missing []nftRule, stale []*nftables.Rule) {
	used := map[*nftables.Rule]bool{}
	for _, w := range c.want {
		i := slices.IndexFunc(c.ours, func(r *nftables.Rule) bool { return !used[r] && textOf(r) == w.text() })
		if i < 0 {
			missing = append(missing, w)
			continue
		}
		used[c.ours[i]] = true
	}
	for _, r := range c.ours {
		if !used[r] {
			stale = append(stale, r)
		}
	}
	return missing, stale
}

func (c nftChain) words() []string {
	missing, stale := c.diff()
	var w []string
	for _, r := range missing {
		w = append(w, "nftables "+chainName(c.chain)+": "+r.text())
	}
	for _, r := range stale {
		w = append(w, "nftables "+chainName(c.chain)+": "+textOf(r)+" (stale)")
	}
	return w
}

// scan finds the forward chains and vtepd's rules in them.
func (b *nftForward) scan() ([]nftChain, error) {
	tables, err := b.nft.ListTables()
	if err != nil {
		return nil, fmt.Errorf("firewall: list nftables tables: %w", err)
	}
	owned := map[string]bool{}
	for _, t := range tables {
		if t.Flags&tableOwner != 0 {
			owned[family(t.Family)+" "+t.Name] = true
		}
	}
	chains, err := b.nft.ListChains()
	if err != nil {
		return nil, fmt.Errorf("firewall: list nftables chains: %w", err)
	}
	from, to := forwardComments(b.network)
	var out []nftChain
	for _, c := range chains {
		fam := c.Table.Family
		if fam != nftables.TableFamilyIPv4 && fam != nftables.TableFamilyINet ||
			c.Hooknum == nil || *c.Hooknum != *nftables.ChainHookForward || c.Type != nftables.ChainTypeFilter ||
			b.skip != nil && b.skip(family(fam), c.Table.Name) {
			continue
		}
		if t := family(fam) + " " + c.Table.Name; owned[t] {
			if !b.warned[t] {
				b.log.Warn("a forward chain in a table another program owns cannot take vtepd's rules; its drops apply to the overlay",
					zap.String("chain", chainName(c)))
			}
			b.warned[t] = true
			continue
		}
		rules, err := b.nft.GetRules(c.Table, c)
		if err != nil {
			return nil, fmt.Errorf("firewall: list rules of %s: %w", chainName(c), err)
		}
		nc := nftChain{chain: c, want: b.rules(fam)}
		for _, r := range rules {
			if s := commentOf(r); s == from || s == to {
				nc.ours = append(nc.ours, r)
			}
		}
		out = append(out, nc)
	}
	return out, nil
}

func (b *nftForward) check() ([]string, error) {
	return b.eachChain("check", func(c nftChain) ([]string, error) { return c.words(), nil })
}

// restore takes out stale rules and puts missing ones at the top, in their
// order.
func (b *nftForward) restore() ([]string, error) {
	return b.eachChain("ensure", func(c nftChain) ([]string, error) {
		missing, stale := c.diff()
		for _, r := range stale {
			if err := b.nft.DelRule(r); err != nil {
				return nil, err
			}
		}
		for i := len(missing) - 1; i >= 0; i-- {
			b.nft.InsertRule(missing[i].in(c.chain))
		}
		return c.words(), nil
	})
}

func (b *nftForward) remove() ([]string, error) {
	return b.eachChain("remove", func(c nftChain) ([]string, error) {
		var removed []string
		for _, r := range c.ours {
			if err := b.nft.DelRule(r); err != nil {
				return nil, err
			}
			removed = append(removed, "nftables "+chainName(c.chain)+": "+textOf(r))
		}
		return removed, nil
	})
}

// eachChain runs fn on every forward chain and sends what fn queued for a
// chain in a transaction of its own, so that a chain that vanished since
// the scan fails alone. It returns what fn said of the chains whose
// transaction went through.
func (b *nftForward) eachChain(op string, fn func(nftChain) ([]string, error)) ([]string, error) {
	chains, err := b.scan()
	if err != nil {
		return nil, err
	}
	var done []string
	var errs []error
	for _, c := range chains {
		words, err := fn(c)
		if err == nil {
			err = b.nft.Flush() // nothing to send: no-op
		}
		if err != nil {
			errs = append(errs, fmt.Errorf("firewall: %s forward rules in %s: %w", op, chainName(c.chain), err))
			continue
		}
		done = append(done, words...)
	}
	return done, errors.Join(errs...)
}
