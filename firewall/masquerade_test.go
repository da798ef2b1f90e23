package firewall

import (
	"context"
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/google/nftables"
)

func newTestMasquerade(t *testing.T, ns string, subnet netip.Prefix) (*Masquerade, *nftables.Conn) {
	t.Helper()
	return newMasqOwner(t, ns, testDevice, testNetwork, subnet).m, nftIn(t, ns)
}

// masqState reads the test's vtepd's table back: its chains' headers and
// rules.
func masqState(t *testing.T, c *nftables.Conn) (header string, rules []string) {
	return masqStateOf(t, c, MasqTable(testDevice))
}

// masqStateOf reads a table back: its chains' headers and rules.
func masqStateOf(t *testing.T, c *nftables.Conn, table string) (header string, rules []string) {
	t.Helper()
	chains, err := c.ListChainsOfTableFamily(nftables.TableFamilyIPv4)
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, ch := range chains {
		if ch.Table.Name != table {
			continue
		}
		n++
		header = ch.Name + ": " + hookOf(ch)
		rules = chainTexts(t, c, nftables.TableFamilyIPv4, table, ch.Name)
	}
	if n > 1 {
		t.Fatalf("%d chains in table %s, want 1", n, table)
	}
	return header, rules
}

func handles(t *testing.T, c *nftables.Conn) []uint64 { return handlesOf(t, c, MasqTable(testDevice)) }

// handlesOf lists the handles of a table's rules: a rewrite changes them.
func handlesOf(t *testing.T, c *nftables.Conn, table string) []uint64 {
	t.Helper()
	rules, err := c.GetRules(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: table}, &nftables.Chain{Name: masqChain})
	if err != nil {
		t.Fatal(err)
	}
	var h []uint64
	for _, r := range rules {
		h = append(h, r.Handle)
	}
	return h
}

// Ensure installs the four rules, listed back from the kernel as built; a
// second Ensure finds them and writes nothing.
func TestMasqueradeEnsure(t *testing.T) {
	ns := newNS(t)
	m, c := newTestMasquerade(t, ns, testSubnet)
	if err := m.Ensure(); err != nil {
		t.Fatal(err)
	}
	header, rules := masqState(t, c)
	if want := "postrouting: type nat hook postrouting priority 90; policy accept"; header != want {
		t.Errorf("chain %q, want %q", header, want)
	}
	equal(t, "rules after Ensure", rules, texts(masqRules(testNetwork, testSubnet)))
	if missing, err := m.Check(); err != nil || len(missing) > 0 {
		t.Fatalf("Check after Ensure: %v, %v", missing, err)
	}
	before := handles(t, c)
	if err := m.Ensure(); err != nil {
		t.Fatal(err)
	}
	_, rules = masqState(t, c)
	equal(t, "rules after a second Ensure", rules, texts(masqRules(testNetwork, testSubnet)))
	if after := handles(t, c); fmt.Sprint(after) != fmt.Sprint(before) {
		t.Errorf("second Ensure rewrote the rules: handles %v, then %v", before, after)
	}
	showRuleset(t, ns)
}

// A rule someone changed or added in vtepd's table is noticed and the table
// rewritten.
func TestMasqueradeRepairsTampering(t *testing.T) {
	ns := newNS(t)
	m, c := newTestMasquerade(t, ns, testSubnet)
	if err := m.Ensure(); err != nil {
		t.Fatal(err)
	}
	ch := masqChainSpec(MasqTable(testDevice))
	c.AddRule(nftRule{"someone else", cat(one(counter), one(accept))}.in(ch))
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if missing, err := m.Check(); err != nil || len(missing) != 1 {
		t.Fatalf("Check with a fifth rule: %q, %v; want one complaint", missing, err)
	}
	if err := m.Ensure(); err != nil {
		t.Fatal(err)
	}
	_, rules := masqState(t, c)
	equal(t, "rules after repair", rules, texts(masqRules(testNetwork, testSubnet)))
}

// A repair replaces the table in one transaction, which the kernel applies
// at once: the nftables monitor sees a single generation holding the old
// table's deletion and the new table with its four rules, so there is no
// moment without rules. A second Ensure finds nothing to do and writes
// nothing.
func TestMasqueradeRepairIsOneTransaction(t *testing.T) {
	ns := newNS(t)
	m, c := newTestMasquerade(t, ns, testSubnet)
	if err := m.Ensure(); err != nil {
		t.Fatal(err)
	}
	c.AddRule(nftRule{"someone else", cat(one(counter), one(accept))}.in(masqChainSpec(MasqTable(testDevice))))
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}

	generations := watchGenerations(t, ns)
	if err := m.Ensure(); err != nil {
		t.Fatal(err)
	}
	if err := m.Ensure(); err != nil { // all in place: no write
		t.Fatal(err)
	}
	gens := generations()
	if len(gens) != 1 {
		t.Fatalf("%d generations, want 1 transaction", len(gens))
	}
	kinds := map[nftables.MonitorEventType]int{}
	for _, e := range gens[0].Changes {
		kinds[e.Type]++
	}
	t.Logf("the one transaction, event type: count: %v", kinds)
	if kinds[nftables.MonitorEventTypeDelTable] != 1 || kinds[nftables.MonitorEventTypeNewTable] != 1 ||
		kinds[nftables.MonitorEventTypeNewRule] != 4 {
		t.Fatalf("one transaction with %v (event type: count), want the old table deleted and a new one with 4 rules", kinds)
	}
	_, rules := masqState(t, c)
	equal(t, "rules after repair", rules, texts(masqRules(testNetwork, testSubnet)))
}

// Remove deletes vtepd's table and nothing else; twice is fine, and so is
// never having installed anything.
func TestMasqueradeRemove(t *testing.T) {
	ns := newNS(t)
	m, c := newTestMasquerade(t, ns, testSubnet)
	if err := m.Remove(); err != nil {
		t.Fatalf("Remove with nothing installed: %v", err)
	}
	// Someone else's NAT table, which must stay.
	theirs := c.AddTable(&nftables.Table{Family: nftables.TableFamilyIPv4, Name: "nat"})
	c.AddChain(&nftables.Chain{Name: "POSTROUTING", Table: theirs, Type: nftables.ChainTypeNAT,
		Hooknum: nftables.ChainHookPostrouting, Priority: nftables.ChainPriorityNATSource})
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	if err := m.Ensure(); err != nil {
		t.Fatal(err)
	}
	if err := m.Remove(); err != nil {
		t.Fatal(err)
	}
	equal(t, "tables after Remove", tableNames(t, c), []string{"ip nat"})
	if err := m.Remove(); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
	if missing, err := m.Check(); err != nil || len(missing) != 4 {
		t.Fatalf("Check after Remove: %q, %v; want the four rules missing", missing, err)
	}
}

// Reassert puts the table back after a `flush ruleset`, and says so once.
func TestMasqueradeReassert(t *testing.T) {
	ns := newNS(t)
	log, logs := testLogger(t)
	m, err := NewMasquerade(log, testDevice, testNetwork, testSubnet, InNetNS(ns))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	c := nftIn(t, ns)
	if err := m.Ensure(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		m.Reassert(ctx, 20*time.Millisecond)
		close(done)
	}()
	defer func() {
		cancel()
		<-done
	}()
	c.FlushRuleset()
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the rules to come back", func() bool {
		_, rules := masqState(t, c)
		return len(rules) == 4
	})
	waitFor(t, "the restore to be logged", func() bool { return count(logs, "firewall rules restored") == 1 })
	time.Sleep(100 * time.Millisecond)
	if n := count(logs, "firewall rules restored"); n != 1 {
		t.Errorf("%d restore messages for one flush, want 1", n)
	}
	cancel()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		t.Fatal("Reassert did not return when its context ended")
	}
}
