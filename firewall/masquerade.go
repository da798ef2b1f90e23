package firewall

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// The table and chain that hold the ip-masq rules. The table is vtepd's
// alone, so that replacing or removing it never touches anyone else's
// rules; the forward rules live elsewhere (see Forward) so that the two
// flags can come and go independently.
const (
	masqTable = "vtepd-nat"
	masqChain = "postrouting"
)

var multicast = netip.MustParsePrefix("224.0.0.0/4")

// Masquerade owns vtepd's nftables table for --ip-masq. Its methods are safe
// for concurrent use.
type Masquerade struct {
	log     *zap.Logger
	place   place
	nft     *nftables.Conn
	network netip.Prefix

	guard  // serialises every kernel operation, and guards subnet
	subnet netip.Prefix
}

// NewMasquerade prepares the ip-masq rules for the host's subnet within the
// overlay network. It writes nothing; Ensure does.
func NewMasquerade(log *zap.Logger, network, subnet netip.Prefix, opts ...Option) (*Masquerade, error) {
	network, subnet, err := masqPrefixes(network, subnet)
	if err != nil {
		return nil, err
	}
	p, err := openPlace(newConfig(opts))
	if err != nil {
		return nil, err
	}
	c, err := p.nft()
	if err != nil {
		p.close()
		return nil, err
	}
	return &Masquerade{log: log, place: p, nft: c, network: network, subnet: subnet}, nil
}

func masqPrefixes(network, subnet netip.Prefix) (netip.Prefix, netip.Prefix, error) {
	network, err := ipv4Prefix("network", network)
	if err != nil {
		return network, subnet, err
	}
	subnet, err = ipv4Prefix("subnet", subnet)
	if err != nil {
		return network, subnet, err
	}
	if subnet.Bits() < network.Bits() || !network.Contains(subnet.Addr()) {
		return network, subnet, fmt.Errorf("firewall: subnet %s is not inside network %s", subnet, network)
	}
	return network, subnet, nil
}

// masqRules are flannel's four MasqRules (flannel's network/iptables.go,
// and its nftables twin), with flannel's order, which they depend on: a
// connection takes the first rule it matches. Flannel's kube-proxy mark rule
// is left out: there is no kube-proxy here.
//
// The first two are what --ip-masq promises. The source is the host's
// subnet rather than flannel's whole network: only this host's containers
// (and the device's own address, which is in the subnet) send from here.
//
// The first is not flannel's RETURN (nor an accept): the kernel consults
// every nat chain on the hook, in priority order, until one of them binds
// a translation, so an accept here would leave Docker's own masquerade of
// its bridge (`-s <bip> ! -o docker0 -j MASQUERADE`, in iptables' nat
// POSTROUTING) free to rewrite traffic between containers of two hosts. It
// is an explicit SNAT to the packet's own source: the connection gets its
// translation, an identity, and no later chain may give it another (issue
// 7: Docker's rule present, sources kept). That is also why the chain runs
// just before iptables' nat table (masqPriority).
//
// The other two are kept, for the same reasons as flannel keeps them. The
// fourth masquerades traffic from outside the overlay into it, so that the
// answer comes back through this host. Without it a remote container
// answers such a source straight through its own host's default route, and
// the answer never matches the connection: that breaks a port Docker
// publishes here and forwards to a container on another host, a socket bound
// to the underlay address, and hosts that route the overlay through this
// one. (The host's own traffic needs nothing: its source is the VXLAN
// device's address, inside the overlay.) The third exempts this host's own
// subnet from the fourth ("Prevent performing Masquerade on external traffic
// which arrives from a Node that owns the container/pod IP address"), so a
// container here still sees a client's real address.
//
// fully-random is always set, as flannel sets it when its iptables has
// --random-fully: the kernel's nft masquerade has accepted the flag since it
// first existed (3.18), so unlike iptables there is nothing to probe.
func masqRules(network, subnet netip.Prefix) []nftRule {
	masq := &expr.Masq{FullyRandom: true}
	return []nftRule{
		{"vtepd: subnet to overlay, source kept", cat(ip(offSaddr, subnet, false), ip(offDaddr, network, false), one(counter), keepSource())},
		{"vtepd: subnet to outside, masquerade", cat(ip(offSaddr, subnet, false), ip(offDaddr, multicast, true), one(counter), one(masq))},
		{"vtepd: outside to subnet, no NAT", cat(ip(offSaddr, network, true), ip(offDaddr, subnet, false), one(counter), one(accept))},
		{"vtepd: outside to overlay, masquerade", cat(ip(offSaddr, network, true), ip(offDaddr, network, false), one(counter), one(masq))},
	}
}

// keepSource translates a packet's source address to itself: see
// masqRules.
func keepSource() []expr.Any {
	return []expr.Any{
		&expr.Payload{DestRegister: 1, Base: expr.PayloadBaseNetworkHeader, Offset: offSaddr, Len: 4},
		&expr.NAT{Type: expr.NATTypeSourceNAT, Family: unix.NFPROTO_IPV4, RegAddrMin: 1},
	}
}

// masqPriority runs the chain before the nat chains of iptables, which
// Docker's masquerade is in (NF_IP_PRI_NAT_SRC, 100): between chains of
// equal priority the kernel goes by the order they were registered in, and
// iptables' nat table is there before vtepd starts.
var masqPriority = nftables.ChainPriorityRef(*nftables.ChainPriorityNATSource - 10)

func masqChainSpec() *nftables.Chain {
	return &nftables.Chain{
		Name:     masqChain,
		Table:    &nftables.Table{Family: nftables.TableFamilyIPv4, Name: masqTable},
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookPostrouting,
		Priority: masqPriority,
		Policy:   ptr(nftables.ChainPolicyAccept),
	}
}

func ptr[T any](v T) *T { return &v }

// Ensure installs the rules unless they are there already, exactly.
func (m *Masquerade) Ensure() error {
	_, err := m.arm(true, func() ([]string, error) {
		missing, err := m.restore()
		if len(missing) > 0 && err == nil {
			m.log.Info("ip-masq rules installed", zap.String("table", "ip "+masqTable),
				zap.Stringer("subnet", m.subnet), zap.Stringer("network", m.network), zap.Strings("missing", missing))
		}
		return nil, err
	})
	return err
}

// Check lists what is not as Ensure would leave it; nothing means all is in
// place.
func (m *Masquerade) Check() ([]string, error) { return m.run(m.check) }

// Reassert checks the rules every period until ctx ends, and puts them back
// when something removed them (`systemctl restart nftables` flushes the
// whole ruleset, for one). It acts only between Ensure and
// Remove. A period of zero or less means 10s.
func (m *Masquerade) Reassert(ctx context.Context, every time.Duration) {
	reassert(ctx, m.log, "ip-masq", every, m.whileArmed(m.check), m.whileArmed(m.restore))
}

// Remove deletes vtepd's table, and with it every rule in it. Removing what
// is not there is not an error.
func (m *Masquerade) Remove() error {
	_, err := m.arm(false, func() ([]string, error) {
		t := masqChainSpec().Table
		// Adding the table first makes the delete succeed when there was none.
		m.nft.AddTable(t)
		m.nft.DelTable(t)
		if err := m.nft.Flush(); err != nil {
			return nil, fmt.Errorf("firewall: remove ip-masq table %s: %w", masqTable, err)
		}
		m.log.Info("ip-masq rules removed", zap.String("table", "ip "+masqTable))
		return nil, nil
	})
	return err
}

// Close releases the namespace. It leaves the rules in place: a restarted
// vtepd finds them and keeps them, with no moment without NAT.
func (m *Masquerade) Close() error { return m.close(m.place.close) }

// restore rewrites the table when check finds anything amiss, and returns
// what that was (nil: nothing to do).
//
// The table is replaced whole, in one transaction: add it (a no-op if it
// exists, and what lets the delete succeed if it does not), delete it with
// whatever it held, and add it again with the chain and rules. The kernel
// applies a transaction at once, so packets see either the old rules or the
// new ones, and anything else someone put in vtepd's table goes.
func (m *Masquerade) restore() ([]string, error) {
	missing, err := m.check()
	if err != nil || len(missing) == 0 {
		return nil, err
	}
	c := masqChainSpec()
	m.nft.AddTable(c.Table)
	m.nft.DelTable(c.Table)
	m.nft.AddTable(c.Table)
	m.nft.AddChain(c)
	for _, r := range masqRules(m.network, m.subnet) {
		m.nft.AddRule(r.in(c))
	}
	if err := m.nft.Flush(); err != nil {
		return nil, fmt.Errorf("firewall: install ip-masq rules in table %s: %w", masqTable, err)
	}
	return missing, nil
}

func (m *Masquerade) check() ([]string, error) {
	want := masqChainSpec()
	chains, err := m.nft.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return nil, fmt.Errorf("firewall: check ip-masq rules: list chains: %w", err)
	}
	rules := masqRules(m.network, m.subnet)
	where := "ip " + masqTable + " " + masqChain + ": "
	i := slices.IndexFunc(chains, func(c *nftables.Chain) bool {
		return c.Table.Name == masqTable && c.Name == masqChain
	})
	if i < 0 {
		var missing []string
		for _, r := range rules {
			missing = append(missing, where+r.text())
		}
		return missing, nil
	}
	if h := hookOf(chains[i]); h != hookOf(want) {
		return []string{where + "chain is " + h + ", not " + hookOf(want)}, nil
	}
	have, err := m.nft.GetRules(chains[i].Table, chains[i])
	if err != nil {
		return nil, fmt.Errorf("firewall: check ip-masq rules: list rules: %w", err)
	}
	var got []string
	for _, r := range have {
		got = append(got, textOf(r))
	}
	var missing []string
	for _, r := range rules {
		if !slices.Contains(got, r.text()) {
			missing = append(missing, where+r.text())
		}
	}
	if missing == nil && len(got) != len(rules) {
		missing = append(missing, where+fmt.Sprintf("%d rules, not %d", len(got), len(rules)))
	}
	if missing == nil {
		for i, r := range rules {
			if got[i] != r.text() {
				missing = append(missing, where+"rules out of order")
				break
			}
		}
	}
	return missing, nil
}

// hookNames are the inet hooks' names, by number.
var hookNames = []string{"prerouting", "input", "forward", "output", "postrouting"}

// hookOf describes a base chain's type, hook, priority and policy, as nft
// does.
func hookOf(c *nftables.Chain) string {
	if c.Hooknum == nil || c.Priority == nil {
		return "a regular chain"
	}
	policy := "accept"
	if c.Policy != nil && *c.Policy == nftables.ChainPolicyDrop {
		policy = "drop"
	}
	hook := fmt.Sprint(*c.Hooknum)
	if h := int(*c.Hooknum); h < len(hookNames) {
		hook = hookNames[h]
	}
	return fmt.Sprintf("type %s hook %s priority %d; policy %s", c.Type, hook, *c.Priority, policy)
}
