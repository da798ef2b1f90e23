package firewall

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// The tables and chain that hold the ip-masq rules. Each vtepd has a table
// of its own, named after the VXLAN device it drives (MasqTable): the
// device is what makes one vtepd one instance on a host (the agent locks
// it, so that one vtepd at a time drives it), and two vtepds for two
// overlays, with two VNIs, have two devices. Replacing or removing a table
// therefore never touches another vtepd's rules, nor anyone else's. The
// forward rules live elsewhere (see Forward) so that the two flags can come
// and go independently.
const (
	masqTablePrefix = "vtepd-nat-"
	masqChain       = "postrouting"
	// legacyMasqTable is the one table every vtepd used before tables were
	// per device; see legacyOwned for what becomes of it.
	legacyMasqTable = "vtepd-nat"
)

// MasqTable names the nftables table (family ip) that holds the ip-masq
// rules of the vtepd driving device: vtepd-nat-flannel.1 for flannel.1.
// The device name is used as it is: names are unique per namespace, so
// tables are too, and the kernel takes any name up to 256 bytes.
func MasqTable(device string) string { return masqTablePrefix + device }

var multicast = netip.MustParsePrefix("224.0.0.0/4")

// Masquerade owns one vtepd's nftables table for --ip-masq. Its methods are
// safe for concurrent use.
type Masquerade struct {
	log     *zap.Logger
	place   place
	nft     *nftables.Conn
	table   string
	network netip.Prefix

	guard  // serialises every kernel operation, and guards subnet
	subnet netip.Prefix
}

// NewMasquerade prepares the ip-masq rules for the host's subnet within the
// overlay network, in the table of the vtepd driving device. It writes
// nothing; Ensure does.
func NewMasquerade(log *zap.Logger, device string, network, subnet netip.Prefix, opts ...Option) (*Masquerade, error) {
	if err := checkDevice(device); err != nil {
		return nil, err
	}
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
	return &Masquerade{log: log, place: p, nft: c, table: MasqTable(device), network: network, subnet: subnet}, nil
}

// checkDevice refuses what cannot be a network device's name (the kernel's
// dev_valid_name), so that the table name is one no other device maps to.
func checkDevice(device string) error {
	if device == "" || len(device) > unix.IFNAMSIZ-1 || device == "." || device == ".." ||
		strings.ContainsAny(device, "/: \t\n\r\v\f") {
		return fmt.Errorf("firewall: device %q: not a network device name (1 to %d bytes, no '/', ':' or blanks)", device, unix.IFNAMSIZ-1)
	}
	return nil
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
		outsideToOverlay(network),
	}
}

// outsideToOverlay is masqRules' fourth rule. It names the network and
// nothing else, which is how legacyOwned tells whose an old table is.
func outsideToOverlay(network netip.Prefix) nftRule {
	return nftRule{"vtepd: outside to overlay, masquerade",
		cat(ip(offSaddr, network, true), ip(offDaddr, network, false), one(counter), one(&expr.Masq{FullyRandom: true}))}
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

func masqChainSpec(table string) *nftables.Chain {
	return &nftables.Chain{
		Name:     masqChain,
		Table:    &nftables.Table{Family: nftables.TableFamilyIPv4, Name: table},
		Type:     nftables.ChainTypeNAT,
		Hooknum:  nftables.ChainHookPostrouting,
		Priority: masqPriority,
		Policy:   ptr(nftables.ChainPolicyAccept),
	}
}

func ptr[T any](v T) *T { return &v }

// Table is the nftables table the rules are in, as nft(8) names it: "ip
// vtepd-nat-flannel.1".
func (m *Masquerade) Table() string { return "ip " + m.table }

// Ensure installs the rules unless they are there already, exactly, and
// takes over from the table an earlier vtepd kept for this network (see
// legacyOwned).
func (m *Masquerade) Ensure() error {
	_, err := m.arm(true, func() ([]string, error) {
		missing, err := m.restore()
		if len(missing) > 0 && err == nil {
			m.log.Info("ip-masq rules installed", zap.String("table", m.Table()),
				zap.Stringer("subnet", m.subnet), zap.Stringer("network", m.network), zap.Strings("missing", missing))
		}
		return nil, err
	})
	return err
}

// Check lists what is not as Ensure would leave it; nothing means all is in
// place.
func (m *Masquerade) Check() ([]string, error) {
	return m.run(func() ([]string, error) {
		s, err := m.survey()
		return s.words(), err
	})
}

// Reassert checks the rules every period until ctx ends, and puts them back
// when something removed them (`systemctl restart nftables` flushes the
// whole ruleset, for one). It acts only between Ensure and
// Remove. A period of zero or less means 10s.
func (m *Masquerade) Reassert(ctx context.Context, every time.Duration) {
	check := func() ([]string, error) {
		s, err := m.survey()
		return s.words(), err
	}
	reassert(ctx, m.log, "ip-masq", every, m.whileArmed(check), m.whileArmed(m.restore))
}

// Remove deletes this vtepd's table, and with it every rule in it, and the
// table an earlier vtepd kept for this network if there is one. Other
// vtepds' tables stay. Removing what is not there is not an error.
func (m *Masquerade) Remove() error {
	_, err := m.arm(false, func() ([]string, error) {
		s, err := m.survey()
		if err != nil {
			return nil, err
		}
		tables := []string{m.table}
		if s.legacy {
			tables = append(tables, legacyMasqTable)
		}
		for _, name := range tables {
			delTable(m.nft, name)
		}
		if err := m.nft.Flush(); err != nil {
			return nil, fmt.Errorf("firewall: remove ip-masq tables %s: %w", strings.Join(tables, ", "), err)
		}
		m.log.Info("ip-masq rules removed", zap.Strings("tables", tables))
		return nil, nil
	})
	return err
}

// delTable queues the deletion of an ip table. Adding it first (a no-op if
// it exists) makes the deletion succeed when it is not there: someone else
// was quicker, or it never was.
func delTable(c *nftables.Conn, name string) {
	t := &nftables.Table{Family: nftables.TableFamilyIPv4, Name: name}
	c.AddTable(t)
	c.DelTable(t)
}

// Close releases the namespace. It leaves the rules in place: a restarted
// vtepd finds them and keeps them, with no moment without NAT.
func (m *Masquerade) Close() error { return m.close(m.place.close) }

// restore rewrites the table when survey finds anything amiss, and returns
// what that was (nil: nothing to do).
//
// The table is replaced whole, in one transaction: add it (a no-op if it
// exists, and what lets the delete succeed if it does not), delete it with
// whatever it held, and add it again with the chain and rules. The same
// transaction deletes the table an earlier vtepd kept for this network, so
// that the old rules go as the new ones come. The kernel applies a
// transaction at once, so packets see either the old rules or the new
// ones, and anything else someone put in vtepd's table goes.
func (m *Masquerade) restore() ([]string, error) {
	s, err := m.survey()
	if err != nil || s.clean() {
		return nil, err
	}
	if len(s.missing) > 0 {
		c := masqChainSpec(m.table)
		delTable(m.nft, m.table)
		m.nft.AddTable(c.Table)
		m.nft.AddChain(c)
		for _, r := range masqRules(m.network, m.subnet) {
			m.nft.AddRule(r.in(c))
		}
	}
	if s.legacy {
		delTable(m.nft, legacyMasqTable)
	}
	if err := m.nft.Flush(); err != nil {
		return nil, fmt.Errorf("firewall: install ip-masq rules in table %s: %w", m.table, err)
	}
	return s.words(), nil
}

// masqSurvey is what survey found: what is amiss in this vtepd's table,
// and whether the legacy table is this vtepd's to take over.
type masqSurvey struct {
	missing []string
	legacy  bool
	network netip.Prefix
}

func (s masqSurvey) clean() bool { return len(s.missing) == 0 && !s.legacy }

func (s masqSurvey) words() []string {
	w := s.missing
	if s.legacy {
		w = append(slices.Clone(w), fmt.Sprintf("ip %s: an earlier vtepd's table with the rules for %s, superseded", legacyMasqTable, s.network))
	}
	return w
}

func (m *Masquerade) survey() (masqSurvey, error) {
	s := masqSurvey{network: m.network}
	chains, err := m.nft.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		return s, fmt.Errorf("firewall: check ip-masq rules: list chains: %w", err)
	}
	if s.missing, err = m.checkOwn(chains); err != nil {
		return s, err
	}
	s.legacy, err = m.legacyOwned(chains)
	return s, err
}

// legacyOwned says whether the table every vtepd used before tables were
// per device (ip vtepd-nat) holds this vtepd's rules, which the upgraded
// vtepd then removes: otherwise it would stay for good beside the new
// table, with the NAT of a subnet this host may no longer hold.
//
// The old table had the rules of whichever vtepd wrote it last, so it is
// this vtepd's when its rules are for this vtepd's network: its fourth rule
// (`ip saddr != <network> ip daddr <network> ... masquerade`) names the
// network alone, whatever subnet the host held then. A table for another
// network is another vtepd's, maybe one not yet upgraded that still
// rewrites it every period: it stays, for that vtepd to take over once
// upgraded (or to remove on a clean stop). A legacy table without that rule
// is nobody's to claim, and stays.
func (m *Masquerade) legacyOwned(chains []*nftables.Chain) (bool, error) {
	mark := outsideToOverlay(m.network).text()
	for _, c := range chains {
		if c.Table.Name != legacyMasqTable {
			continue
		}
		rules, err := m.nft.GetRules(c.Table, c)
		if err != nil {
			return false, fmt.Errorf("firewall: check ip-masq rules: list rules of ip %s %s: %w", legacyMasqTable, c.Name, err)
		}
		if slices.ContainsFunc(rules, func(r *nftables.Rule) bool { return textOf(r) == mark }) {
			return true, nil
		}
	}
	return false, nil
}

// checkOwn lists what is not as it should be in this vtepd's table.
func (m *Masquerade) checkOwn(chains []*nftables.Chain) ([]string, error) {
	want := masqChainSpec(m.table)
	rules := masqRules(m.network, m.subnet)
	where := m.Table() + " " + masqChain + ": "
	i := slices.IndexFunc(chains, func(c *nftables.Chain) bool {
		return c.Table.Name == m.table && c.Name == masqChain
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
