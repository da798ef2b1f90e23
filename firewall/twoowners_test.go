package firewall

import (
	"context"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-iptables/iptables"
	"github.com/google/nftables"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
)

// A second vtepd on the same host, for a second overlay, as flannel runs
// two: its own etcd prefix, subnet file and VNI, hence its own device.
var (
	secondDevice  = "flannel.2"
	secondNetwork = netip.MustParsePrefix("10.6.0.0/16")
	secondSubnet  = netip.MustParsePrefix("10.6.7.0/24")
)

// masqOwner is one vtepd's Masquerade in a test, with its log.
type masqOwner struct {
	m               *Masquerade
	logs            *observer.ObservedLogs
	table           string
	network, subnet netip.Prefix
}

func newMasqOwner(t *testing.T, ns, device string, network, subnet netip.Prefix) *masqOwner {
	t.Helper()
	log, logs := testLogger(t)
	m, err := NewMasquerade(log, device, network, subnet, InNetNS(ns))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { m.Close() })
	return &masqOwner{m: m, logs: logs, table: MasqTable(device), network: network, subnet: subnet}
}

// reassert runs the owner's Reassert, as the agent does, until the test
// ends.
func (o *masqOwner) reassert(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		o.m.Reassert(ctx, 20*time.Millisecond)
		close(done)
	}()
	t.Cleanup(func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("Reassert did not return when its context ended")
		}
	})
}

// exact fails t unless the owner's table holds exactly its four rules.
func (o *masqOwner) exact(t *testing.T, c *nftables.Conn, when string) {
	t.Helper()
	_, rules := masqStateOf(t, c, o.table)
	equal(t, o.table+" "+when, rules, texts(masqRules(o.network, o.subnet)))
}

// tableNames lists the namespace's tables as nft names them, sorted.
func tableNames(t *testing.T, c *nftables.Conn) []string {
	t.Helper()
	tables, err := c.ListTables()
	if err != nil {
		t.Fatal(err)
	}
	var names []string
	for _, tb := range tables {
		names = append(names, family(tb.Family)+" "+tb.Name)
	}
	slices.Sort(names)
	return names
}

// Two vtepds with --ip-masq on one host: each has its table, neither
// rewrites the other's while both re-assert every 20ms, a flush of the
// whole ruleset is restored for both, and a Remove takes one table and
// leaves the other's rules as they were, untouched.
func TestMasqueradeTwoOwners(t *testing.T) {
	ns := newNS(t)
	c := nftIn(t, ns)
	a := newMasqOwner(t, ns, testDevice, testNetwork, testSubnet)
	b := newMasqOwner(t, ns, secondDevice, secondNetwork, secondSubnet)
	if a.table == b.table {
		t.Fatalf("both vtepds use table %s", a.table)
	}
	for _, o := range []*masqOwner{a, b} {
		if err := o.m.Ensure(); err != nil {
			t.Fatal(err)
		}
	}
	a.exact(t, c, "after both Ensures")
	b.exact(t, c, "after both Ensures")
	equal(t, "tables", tableNames(t, c), []string{"ip " + a.table, "ip " + b.table})
	ha, hb := handlesOf(t, c, a.table), handlesOf(t, c, b.table)

	// Side by side for a while: Ensure again, Check, and Reassert every
	// 20ms from both; neither finds anything to do.
	a.reassert(t)
	b.reassert(t)
	for _, o := range []*masqOwner{a, b} {
		if err := o.m.Ensure(); err != nil {
			t.Fatal(err)
		}
		if missing, err := o.m.Check(); err != nil || len(missing) > 0 {
			t.Fatalf("Check of %s beside the other: %q, %v", o.table, missing, err)
		}
	}
	time.Sleep(200 * time.Millisecond) // ten periods of each
	for _, o := range []*masqOwner{a, b} {
		if n := count(o.logs, "firewall rules restored"); n != 0 {
			t.Errorf("%s restored %d times with nothing removed: the two fight", o.table, n)
		}
	}
	if got := handlesOf(t, c, a.table); fmt.Sprint(got) != fmt.Sprint(ha) {
		t.Errorf("%s rewritten beside the other: handles %v, then %v", a.table, ha, got)
	}
	if got := handlesOf(t, c, b.table); fmt.Sprint(got) != fmt.Sprint(hb) {
		t.Errorf("%s rewritten beside the other: handles %v, then %v", b.table, hb, got)
	}

	// `systemctl restart nftables`: everything flushed; both come back.
	c.FlushRuleset()
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "both tables to come back", func() bool {
		_, ra := masqStateOf(t, c, a.table)
		_, rb := masqStateOf(t, c, b.table)
		return len(ra) == 4 && len(rb) == 4
	})
	a.exact(t, c, "after a flush")
	b.exact(t, c, "after a flush")
	for _, o := range []*masqOwner{a, b} {
		waitFor(t, o.table+"'s restore to be logged", func() bool { return count(o.logs, "firewall rules restored") == 1 })
	}
	showRuleset(t, ns)

	// A clean stop of the first: its table goes, the second's stays as it
	// was, and neither Reassert (the first's disarmed, the second's
	// running) brings the first's back.
	hb = handlesOf(t, c, b.table)
	if err := a.m.Remove(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond) // five periods
	equal(t, "tables after the first's Remove", tableNames(t, c), []string{"ip " + b.table})
	b.exact(t, c, "after the first's Remove")
	if got := handlesOf(t, c, b.table); fmt.Sprint(got) != fmt.Sprint(hb) {
		t.Errorf("the first's Remove rewrote %s: handles %v, then %v", b.table, hb, got)
	}
	if missing, err := b.m.Check(); err != nil || len(missing) > 0 {
		t.Errorf("Check of %s after the first's Remove: %q, %v", b.table, missing, err)
	}
	if missing, err := a.m.Check(); err != nil || len(missing) != 4 {
		t.Errorf("Check of %s after its Remove: %q, %v; want its four rules missing", a.table, missing, err)
	}

	// The first restarts: its own table back, the second's untouched.
	if err := a.m.Ensure(); err != nil {
		t.Fatal(err)
	}
	a.exact(t, c, "after the first's restart")
	if got := handlesOf(t, c, b.table); fmt.Sprint(got) != fmt.Sprint(hb) {
		t.Errorf("the first's Ensure rewrote %s: handles %v, then %v", b.table, hb, got)
	}
	if err := b.m.Remove(); err != nil {
		t.Fatal(err)
	}
	equal(t, "tables after the second's Remove", tableNames(t, c), []string{"ip " + a.table})
}

// legacyTable writes the one table vtepd used before tables were per
// device, ip vtepd-nat, as that vtepd wrote it for network and subnet.
func legacyTable(t *testing.T, c *nftables.Conn, network, subnet netip.Prefix) {
	t.Helper()
	ch := masqChainSpec(legacyMasqTable)
	c.AddTable(ch.Table)
	c.AddChain(ch)
	for _, r := range masqRules(network, subnet) {
		c.AddRule(r.in(ch))
	}
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
}

// An upgraded vtepd takes over the old single table when it holds its
// network's rules, whatever subnet they were for: the old table goes in
// the transaction that writes the new one. The old table of another
// network (a vtepd not upgraded yet) stays, through Ensure, Reassert and
// Remove, until the vtepd of that network removes it.
func TestMasqueradeLegacyTable(t *testing.T) {
	ns := newNS(t)
	c := nftIn(t, ns)
	oldSubnet := netip.MustParsePrefix("10.5.9.0/24") // the host held another subnet then
	legacyTable(t, c, testNetwork, oldSubnet)
	a := newMasqOwner(t, ns, testDevice, testNetwork, testSubnet)
	missing, err := a.m.Check()
	if err != nil {
		t.Fatal(err)
	}
	if n := len(missing); n != 5 || !strings.Contains(missing[4], "ip vtepd-nat: an earlier vtepd's table with the rules for 10.5.0.0/16") {
		t.Fatalf("Check beside the old table: %q; want four rules missing and the old table superseded", missing)
	}

	generations := watchGenerations(t, ns)
	if err := a.m.Ensure(); err != nil {
		t.Fatal(err)
	}
	gens := generations()
	if len(gens) != 1 {
		t.Fatalf("%d generations for the take-over, want 1 transaction", len(gens))
	}
	var deleted, added []string
	for _, e := range gens[0].Changes {
		tb, ok := e.Data.(*nftables.Table)
		switch {
		case !ok:
		case e.Type == nftables.MonitorEventTypeDelTable:
			deleted = append(deleted, tb.Name)
		case e.Type == nftables.MonitorEventTypeNewTable:
			added = append(added, tb.Name)
		}
	}
	if !slices.Contains(deleted, legacyMasqTable) || !slices.Contains(added, a.table) {
		t.Fatalf("one transaction deleting %v and adding %v; want %s deleted and %s added together", deleted, added, legacyMasqTable, a.table)
	}
	equal(t, "tables after the take-over", tableNames(t, c), []string{"ip " + a.table})
	a.exact(t, c, "after the take-over")
	if e := a.logs.FilterMessage("ip-masq rules installed").All(); len(e) != 1 ||
		!strings.Contains(fmt.Sprint(e[0].ContextMap()["missing"]), "superseded") {
		t.Errorf("take-over logged as %v", e)
	}

	// The old table again, now another network's: a vtepd for 10.6.0.0/16
	// not upgraded yet. The first vtepd keeps out of it.
	legacyTable(t, c, secondNetwork, secondSubnet)
	a.reassert(t)
	if missing, err := a.m.Check(); err != nil || len(missing) > 0 {
		t.Fatalf("Check beside another network's old table: %q, %v", missing, err)
	}
	time.Sleep(100 * time.Millisecond) // five periods
	if err := a.m.Remove(); err != nil {
		t.Fatal(err)
	}
	equal(t, "tables after the first's Remove", tableNames(t, c), []string{"ip " + legacyMasqTable})
	_, rules := masqStateOf(t, c, legacyMasqTable)
	equal(t, "the other network's old table", rules, texts(masqRules(secondNetwork, secondSubnet)))

	// That vtepd, upgraded, starts with --ip-masq off: its Remove takes the
	// old table, since it is its own.
	b := newMasqOwner(t, ns, secondDevice, secondNetwork, secondSubnet)
	if err := b.m.Remove(); err != nil {
		t.Fatal(err)
	}
	equal(t, "tables after the second's Remove", tableNames(t, c), nil)
}

// A forward owner in a test, with its log.
type fwdOwner struct {
	f       *Forward
	logs    *observer.ObservedLogs
	network netip.Prefix
}

func newFwdOwner(t *testing.T, ns string, network netip.Prefix, opts ...Option) *fwdOwner {
	t.Helper()
	log, logs := testLogger(t)
	f, err := NewForward(log, network, append([]Option{InNetNS(ns)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return &fwdOwner{f: f, logs: logs, network: network}
}

// ipRules are the owner's forward rules as `iptables -S <chain>` lists
// them.
func (o *fwdOwner) ipRules(chain string) []string {
	var s []string
	for _, r := range ipForwardRules(o.network) {
		s = append(s, "-A "+chain+" "+r.String())
	}
	return s
}

// Two vtepds for two overlays with --forward-rules, through each iptables
// variant, on a host whose FORWARD policy is DROP: both keep their rules
// in FORWARD, both move them into DOCKER-USER when Docker starts, both
// restore them when a restarting dockerd flushes it, and a Remove takes
// one vtepd's rules only, leaving the other's and Docker's jump.
func TestForwardTwoOwnersIPTables(t *testing.T) {
	for _, cmd := range variants(t) {
		t.Run(cmd, func(t *testing.T) {
			ns := newNS(t)
			x := newIPTablesIn(t, ns, cmd)
			x.do(func(ipt *iptables.IPTables) error { return ipt.ChangePolicy(filterTable, chainForward, "DROP") })
			opts := []Option{WithBackend(BackendIPTables), WithIPTablesCommand(cmd)}
			a := newFwdOwner(t, ns, testNetwork, opts...)
			b := newFwdOwner(t, ns, secondNetwork, opts...)
			for _, o := range []*fwdOwner{a, b} {
				if err := o.f.Ensure(); err != nil {
					t.Fatal(err)
				}
			}
			// Each puts its rules on top: the second's come first.
			wantForward := append(append([]string{"-P FORWARD DROP"}, b.ipRules(chainForward)...), a.ipRules(chainForward)...)
			equal(t, "FORWARD with both", x.list(chainForward), wantForward)
			for _, o := range []*fwdOwner{a, b} {
				checkClean(t, o.f)
				keeping(t, o.f)
			}
			time.Sleep(100 * time.Millisecond) // five periods of each
			equal(t, "FORWARD with both re-asserting", x.list(chainForward), wantForward)

			x.dockerStarts()
			waitFor(t, "both vtepds' rules to move to DOCKER-USER", func() bool {
				du := x.list(chainDockerUser)
				return len(x.list(chainForward)) == 2 && len(du) == 6 &&
					slices.Contains(du, a.ipRules(chainDockerUser)[0]) && slices.Contains(du, b.ipRules(chainDockerUser)[1])
			})
			x.save(cmd)

			// dockerd restarts: DOCKER-USER flushed and made again.
			x.do(func(ipt *iptables.IPTables) error { return ipt.ClearChain(filterTable, chainDockerUser) })
			x.dockerStarts()
			waitFor(t, "both vtepds' rules to come back", func() bool { return len(x.list(chainDockerUser)) == 6 })
			for _, o := range []*fwdOwner{a, b} {
				waitFor(t, o.network.String()+"'s restore to be logged", func() bool { return count(o.logs, "firewall rules restored") == 2 })
				checkClean(t, o.f)
			}

			// The first stops cleanly while the second goes on re-asserting.
			if err := a.f.Remove(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond)
			equal(t, "DOCKER-USER after the first's Remove", x.list(chainDockerUser),
				append(append([]string{"-N DOCKER-USER"}, b.ipRules(chainDockerUser)...), "-A DOCKER-USER -j RETURN"))
			equal(t, "FORWARD after the first's Remove", x.list(chainForward), []string{"-P FORWARD DROP", "-A FORWARD -j DOCKER-USER"})
			checkClean(t, b.f)

			// It restarts: its rules back, the second's still there.
			if err := a.f.Ensure(); err != nil {
				t.Fatal(err)
			}
			checkClean(t, a.f)
			checkClean(t, b.f)
			if err := b.f.Remove(); err != nil {
				t.Fatal(err)
			}
			equal(t, "DOCKER-USER after the second's Remove", x.list(chainDockerUser),
				append(append([]string{"-N DOCKER-USER"}, a.ipRules(chainDockerUser)...), "-A DOCKER-USER -j RETURN"))
		})
	}
}

// The same two vtepds through nftables: both sets of rules at the top of
// every forward chain, restored for both after a firewall reload, and one
// vtepd's Remove leaving the other's rules and the chain's own.
func TestForwardTwoOwnersNFTables(t *testing.T) {
	ns := newNS(t)
	c := nftIn(t, ns)
	fw, other := addForeign(t, c)
	a := newFwdOwner(t, ns, testNetwork, WithBackend(BackendNFTables))
	b := newFwdOwner(t, ns, secondNetwork, WithBackend(BackendNFTables))
	for _, o := range []*fwdOwner{a, b} {
		if err := o.f.Ensure(); err != nil {
			t.Fatal(err)
		}
	}
	rulesOf := func(o *fwdOwner, fam nftables.TableFamily) []string {
		return texts((&nftForward{network: o.network}).rules(fam))
	}
	both := func(fam nftables.TableFamily) []string {
		return append(rulesOf(b, fam), rulesOf(a, fam)...)
	}
	wantFW := append(both(nftables.TableFamilyINet), adminDrop.text())
	equal(t, "inet fw forward with both", chainTexts(t, c, fw.Table.Family, "fw", "forward"), wantFW)
	equal(t, "ip other fwd with both", chainTexts(t, c, other.Table.Family, "other", "fwd"), both(nftables.TableFamilyIPv4))
	for _, o := range []*fwdOwner{a, b} {
		checkClean(t, o.f)
		keeping(t, o.f)
	}
	time.Sleep(100 * time.Millisecond)
	equal(t, "inet fw forward with both re-asserting", chainTexts(t, c, fw.Table.Family, "fw", "forward"), wantFW)
	for _, o := range []*fwdOwner{a, b} {
		if n := count(o.logs, "firewall rules restored"); n != 0 {
			t.Errorf("%s restored %d times with nothing removed: the two fight", o.network, n)
		}
	}

	// firewalld reloads: its chain flushed and filled again.
	c.FlushChain(fw)
	c.AddRule(adminDrop.in(fw))
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "both vtepds' rules to come back", func() bool {
		got := chainTexts(t, c, fw.Table.Family, "fw", "forward")
		return len(got) == 5 && got[4] == adminDrop.text() &&
			slices.Contains(got, rulesOf(a, nftables.TableFamilyINet)[0]) && slices.Contains(got, rulesOf(b, nftables.TableFamilyINet)[1])
	})
	for _, o := range []*fwdOwner{a, b} {
		waitFor(t, o.network.String()+"'s restore to be logged", func() bool { return count(o.logs, "firewall rules restored") == 1 })
		checkClean(t, o.f)
	}
	showRuleset(t, ns)

	if err := a.f.Remove(); err != nil {
		t.Fatal(err)
	}
	time.Sleep(100 * time.Millisecond)
	equal(t, "inet fw forward after the first's Remove", chainTexts(t, c, fw.Table.Family, "fw", "forward"),
		append(rulesOf(b, nftables.TableFamilyINet), adminDrop.text()))
	equal(t, "ip other fwd after the first's Remove", chainTexts(t, c, other.Table.Family, "other", "fwd"), rulesOf(b, nftables.TableFamilyIPv4))
	checkClean(t, b.f)
}

// Device names the kernel refuses cannot name a table either.
func TestMasqTableNames(t *testing.T) {
	if got := MasqTable("flannel.1"); got != "vtepd-nat-flannel.1" {
		t.Errorf("MasqTable(flannel.1) = %q", got)
	}
	for _, dev := range []string{"", "a/b", "vx:1", "vx 1", "..", "sixteen-bytes-xx"} {
		_, err := NewMasquerade(zap.NewNop(), dev, testNetwork, testSubnet)
		if err == nil || !strings.Contains(err.Error(), fmt.Sprintf("device %q", dev)) {
			t.Errorf("device %q: error %v, want one naming it", dev, err)
		}
	}
}
