package firewall

import (
	"context"
	"net/netip"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/coreos/go-iptables/iptables"
	"github.com/google/nftables"
	"github.com/google/nftables/expr"
	"go.uber.org/zap/zaptest/observer"
)

const (
	fromRule = `-s 10.5.0.0/16 -m comment --comment "vtepd: forward from 10.5.0.0/16" -j ACCEPT`
	toRule   = `-d 10.5.0.0/16 -m comment --comment "vtepd: forward to 10.5.0.0/16" -j ACCEPT`
	// Someone else's rules, which must outlive vtepd's.
	adminRule = `-s 192.0.2.0/24 -m comment --comment "admin: keep me" -j DROP`
)

// variants are the iptables commands installed here, each tested on its own.
func variants(t *testing.T) []string {
	var v []string
	for _, cmd := range []string{"iptables-nft", "iptables-legacy"} {
		if _, err := exec.LookPath(cmd); err == nil {
			v = append(v, cmd)
		}
	}
	if len(v) == 0 {
		t.Skip("no iptables-nft or iptables-legacy installed (Debian package iptables)")
	}
	return v
}

// iptablesIn drives the iptables command cmd in the namespace at ns, as
// Docker or an administrator would.
type iptablesIn struct {
	t   *testing.T
	ns  string
	ipt *iptables.IPTables
}

func newIPTablesIn(t *testing.T, ns, cmd string) *iptablesIn {
	ipt, err := iptables.New(iptables.Path(cmd))
	if err != nil {
		t.Fatal(err)
	}
	return &iptablesIn{t: t, ns: ns, ipt: ipt}
}

func (x *iptablesIn) do(fn func(ipt *iptables.IPTables) error) {
	x.t.Helper()
	inNS(x.t, x.ns, func() error { return fn(x.ipt) })
}

// list returns a chain as `iptables -S chain` prints it.
func (x *iptablesIn) list(chain string) []string {
	x.t.Helper()
	var lines []string
	x.do(func(ipt *iptables.IPTables) (err error) {
		lines, err = ipt.List(filterTable, chain)
		return err
	})
	return lines
}

// save logs iptables-save's filter table, for a person to read.
func (x *iptablesIn) save(cmd string) {
	x.t.Helper()
	x.t.Logf("%s-save -t filter:\n%s", cmd, run(x.t, x.ns, cmd+"-save", "-t", "filter"))
}

// dockerStarts does what dockerd does to the filter table when it starts:
// DOCKER-USER ending in RETURN, and FORWARD's first rule jumping to it.
func (x *iptablesIn) dockerStarts() {
	x.t.Helper()
	x.do(func(ipt *iptables.IPTables) error {
		exists, err := ipt.ChainExists(filterTable, chainDockerUser)
		if err != nil {
			return err
		}
		if !exists {
			if err := ipt.NewChain(filterTable, chainDockerUser); err != nil {
				return err
			}
		}
		if err := ipt.AppendUnique(filterTable, chainDockerUser, "-j", "RETURN"); err != nil {
			return err
		}
		return ipt.InsertUnique(filterTable, chainForward, 1, "-j", chainDockerUser)
	})
}

func newTestForward(t *testing.T, ns string, opts ...Option) (*Forward, *observer.ObservedLogs) {
	t.Helper()
	log, logs := testLogger(t)
	f, err := NewForward(log, testNetwork, append([]Option{InNetNS(ns)}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, logs
}

// keeping runs f.Reassert until stop is called (or the test ends), and checks
// that it returns then.
func keeping(t *testing.T, f *Forward) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		f.Reassert(ctx, 20*time.Millisecond)
		close(done)
	}()
	stop = func() {
		cancel()
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			t.Error("Reassert did not return when its context ended")
		}
	}
	t.Cleanup(stop)
	return stop
}

func checkClean(t *testing.T, f *Forward) {
	t.Helper()
	if missing, err := f.Check(); err != nil || len(missing) > 0 {
		t.Fatalf("Check: %q, %v; want nothing missing", missing, err)
	}
}

// The iptables backend, with each iptables variant: FORWARD policy DROP,
// rules in FORWARD while there is no Docker, moved to the top of
// DOCKER-USER when Docker starts, restored after Docker flushed its chain,
// and removed leaving everyone else's rules alone.
func TestForwardIPTables(t *testing.T) {
	for _, cmd := range variants(t) {
		t.Run(cmd, func(t *testing.T) {
			ns := newNS(t)
			x := newIPTablesIn(t, ns, cmd)
			x.do(func(ipt *iptables.IPTables) error {
				if err := ipt.ChangePolicy(filterTable, chainForward, "DROP"); err != nil {
					return err
				}
				return ipt.Append(filterTable, chainForward, "-s", "192.0.2.0/24", "-m", "comment", "--comment", "admin: keep me", "-j", "DROP")
			})

			f, logs := newTestForward(t, ns, WithBackend(BackendIPTables), WithIPTablesCommand(cmd))
			if !strings.HasPrefix(f.Backend(), cmd+" (") {
				t.Errorf("backend %q, want %s", f.Backend(), cmd)
			}
			if err := f.Ensure(); err != nil {
				t.Fatal(err)
			}
			wantForward := []string{"-P FORWARD DROP", "-A FORWARD " + fromRule, "-A FORWARD " + toRule, "-A FORWARD " + adminRule}
			equal(t, "FORWARD without Docker", x.list(chainForward), wantForward)
			checkClean(t, f)
			if err := f.Ensure(); err != nil {
				t.Fatal(err)
			}
			equal(t, "FORWARD after a second Ensure", x.list(chainForward), wantForward)
			start := time.Now()
			checkClean(t, f)
			t.Logf("one Check took %v", time.Since(start))

			// dockerd starts after vtepd.
			keeping(t, f)
			x.dockerStarts()
			wantDockerUser := []string{"-N DOCKER-USER", "-A DOCKER-USER " + fromRule, "-A DOCKER-USER " + toRule, "-A DOCKER-USER -j RETURN"}
			waitFor(t, "the rules to move to DOCKER-USER", func() bool {
				return slices.Equal(x.list(chainDockerUser), wantDockerUser) && len(x.list(chainForward)) == 3
			})
			equal(t, "FORWARD with Docker", x.list(chainForward), []string{"-P FORWARD DROP", "-A FORWARD -j DOCKER-USER", "-A FORWARD " + adminRule})
			waitFor(t, "the move to be logged", func() bool { return count(logs, "firewall rules restored") == 1 })
			x.save(cmd)

			// dockerd restarts: DOCKER-USER flushed and made again.
			x.do(func(ipt *iptables.IPTables) error { return ipt.ClearChain(filterTable, chainDockerUser) })
			x.dockerStarts()
			waitFor(t, "the rules to come back", func() bool { return slices.Equal(x.list(chainDockerUser), wantDockerUser) })
			waitFor(t, "the restore to be logged", func() bool { return count(logs, "firewall rules restored") == 2 })
			checkClean(t, f)

			// Someone's own rule in DOCKER-USER, which Remove leaves.
			x.do(func(ipt *iptables.IPTables) error {
				return ipt.Insert(filterTable, chainDockerUser, 1, "-d", "10.5.0.0/16", "-m", "comment", "--comment", "admin: mine", "-j", "ACCEPT")
			})
			// Remove while Reassert still runs, as a shutdown might: Reassert must
			// not put the rules back.
			if err := f.Remove(); err != nil {
				t.Fatal(err)
			}
			time.Sleep(100 * time.Millisecond) // five of Reassert's periods
			equal(t, "DOCKER-USER after Remove", x.list(chainDockerUser), []string{"-N DOCKER-USER",
				`-A DOCKER-USER -d 10.5.0.0/16 -m comment --comment "admin: mine" -j ACCEPT`, "-A DOCKER-USER -j RETURN"})
			equal(t, "FORWARD after Remove", x.list(chainForward), []string{"-P FORWARD DROP", "-A FORWARD -j DOCKER-USER", "-A FORWARD " + adminRule})
			if err := f.Remove(); err != nil {
				t.Fatalf("second Remove: %v", err)
			}
		})
	}
}

// forwardChain is a base chain on the forward hook.
func forwardChain(fam nftables.TableFamily, table, name string, policy nftables.ChainPolicy) *nftables.Chain {
	return &nftables.Chain{
		Name:     name,
		Table:    &nftables.Table{Family: fam, Name: table},
		Type:     nftables.ChainTypeFilter,
		Hooknum:  nftables.ChainHookForward,
		Priority: nftables.ChainPriorityFilter,
		Policy:   &policy,
	}
}

// adminDrop is someone else's rule in a foreign forward chain.
var adminDrop = nftRule{"admin: keep me", cat(ipv4Only(), ip(offSaddr, netip.MustParsePrefix("192.0.2.0/24"), false), one(counter), one(&expr.Verdict{Kind: expr.VerdictDrop}))}

// addForeign makes tables of someone else's in the namespace: inet fw with a
// forward chain of policy drop holding a rule of its own and an input
// chain, and ip other with a forward chain of policy accept.
func addForeign(t *testing.T, c *nftables.Conn) (fw, other *nftables.Chain) {
	t.Helper()
	fw = forwardChain(nftables.TableFamilyINet, "fw", "forward", nftables.ChainPolicyDrop)
	other = forwardChain(nftables.TableFamilyIPv4, "other", "fwd", nftables.ChainPolicyAccept)
	input := forwardChain(nftables.TableFamilyINet, "fw", "input", nftables.ChainPolicyAccept)
	input.Hooknum = nftables.ChainHookInput
	c.AddTable(fw.Table)
	c.AddChain(fw)
	c.AddChain(input)
	c.AddChain(&nftables.Chain{Name: "regular", Table: fw.Table})
	c.AddRule(adminDrop.in(fw))
	c.AddTable(other.Table)
	c.AddChain(other)
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	return fw, other
}

// The nftables backend: vtepd's rules go to the top of every forward chain,
// in inet and ip tables, whatever the policy, and nowhere else; a flushed
// chain and a chain that appears later get them on the next restore; Remove
// takes only vtepd's.
func TestForwardNFTables(t *testing.T) {
	ns := newNS(t)
	c := nftIn(t, ns)
	fw, other := addForeign(t, c)
	f, logs := newTestForward(t, ns, WithBackend(BackendNFTables))
	if f.Backend() != "nftables (every forward chain)" {
		t.Errorf("backend %q", f.Backend())
	}
	if err := f.Ensure(); err != nil {
		t.Fatal(err)
	}
	b := &nftForward{network: testNetwork}
	inet := texts(b.rules(nftables.TableFamilyINet))
	ip4 := texts(b.rules(nftables.TableFamilyIPv4))
	wantFW := append(slices.Clone(inet), adminDrop.text())
	equal(t, "inet fw forward", chainTexts(t, c, fw.Table.Family, "fw", "forward"), wantFW)
	equal(t, "ip other fwd", chainTexts(t, c, other.Table.Family, "other", "fwd"), ip4)
	equal(t, "inet fw input", chainTexts(t, c, fw.Table.Family, "fw", "input"), nil)
	equal(t, "inet fw regular", chainTexts(t, c, fw.Table.Family, "fw", "regular"), nil)
	checkClean(t, f)
	if err := f.Ensure(); err != nil {
		t.Fatal(err)
	}
	equal(t, "inet fw forward after a second Ensure", chainTexts(t, c, fw.Table.Family, "fw", "forward"), wantFW)
	showRuleset(t, ns)

	stop := keeping(t, f)
	// firewalld reloads: its chain flushed and filled again.
	c.FlushChain(fw)
	c.AddRule(adminDrop.in(fw))
	// A firewall that starts later.
	late := forwardChain(nftables.TableFamilyIPv4, "late", "forward", nftables.ChainPolicyDrop)
	c.AddTable(late.Table)
	c.AddChain(late)
	if err := c.Flush(); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the rules to come back", func() bool {
		return slices.Equal(chainTexts(t, c, fw.Table.Family, "fw", "forward"), wantFW) &&
			slices.Equal(chainTexts(t, c, late.Table.Family, "late", "forward"), ip4)
	})
	waitFor(t, "the restore to be logged", func() bool { return count(logs, "firewall rules restored") == 1 })
	checkClean(t, f)

	stop()
	if err := f.Remove(); err != nil {
		t.Fatal(err)
	}
	equal(t, "inet fw forward after Remove", chainTexts(t, c, fw.Table.Family, "fw", "forward"), []string{adminDrop.text()})
	equal(t, "ip other fwd after Remove", chainTexts(t, c, other.Table.Family, "other", "fwd"), nil)
	equal(t, "ip late forward after Remove", chainTexts(t, c, late.Table.Family, "late", "forward"), nil)
	if err := f.Remove(); err != nil {
		t.Fatalf("second Remove: %v", err)
	}
}

// With no iptables command, the default backend is nftables alone.
func TestForwardNFTablesOnlyHost(t *testing.T) {
	ns := newNS(t)
	c := nftIn(t, ns)
	fw, _ := addForeign(t, c)
	f, logs := newTestForward(t, ns, WithIPTablesCommand("vtepd-test-no-such-iptables"))
	if f.Backend() != "nftables (every forward chain)" {
		t.Fatalf("backend %q, want nftables alone", f.Backend())
	}
	if e := logs.FilterMessage("forward rules backend chosen").All(); len(e) != 1 || !strings.Contains(e[0].ContextMap()["why"].(string), "nftables-only") {
		t.Errorf("backend choice logged as %v", e)
	}
	if err := f.Ensure(); err != nil {
		t.Fatal(err)
	}
	equal(t, "inet fw forward", chainTexts(t, c, fw.Table.Family, "fw", "forward"),
		append(texts((&nftForward{network: testNetwork}).rules(nftables.TableFamilyINet)), adminDrop.text()))
}

// The default backend on a host with iptables-nft and a native nftables
// firewall beside it: iptables writes FORWARD, nftables the native chain,
// and neither writes the other's.
func TestForwardAutoBoth(t *testing.T) {
	if _, err := exec.LookPath("iptables-nft"); err != nil {
		t.Skip("iptables-nft not installed (Debian package iptables)")
	}
	ns := newNS(t)
	c := nftIn(t, ns)
	x := newIPTablesIn(t, ns, "iptables-nft")
	x.do(func(ipt *iptables.IPTables) error { return ipt.ChangePolicy(filterTable, chainForward, "DROP") })
	fw, _ := addForeign(t, c)
	f, _ := newTestForward(t, ns, WithIPTablesCommand("iptables-nft"))
	if want := "iptables-nft ("; !strings.HasPrefix(f.Backend(), want) || !strings.HasSuffix(f.Backend(), "+ nftables (forward chains other than iptables-nft's)") {
		t.Fatalf("backend %q", f.Backend())
	}
	if err := f.Ensure(); err != nil {
		t.Fatal(err)
	}
	equal(t, "FORWARD", x.list(chainForward), []string{"-P FORWARD DROP", "-A FORWARD " + fromRule, "-A FORWARD " + toRule})
	equal(t, "inet fw forward", chainTexts(t, c, fw.Table.Family, "fw", "forward"),
		append(texts((&nftForward{network: testNetwork}).rules(nftables.TableFamilyINet)), adminDrop.text()))
	checkClean(t, f)
	showRuleset(t, ns)
	if err := f.Remove(); err != nil {
		t.Fatal(err)
	}
	equal(t, "FORWARD after Remove", x.list(chainForward), []string{"-P FORWARD DROP"})
	equal(t, "inet fw forward after Remove", chainTexts(t, c, fw.Table.Family, "fw", "forward"), []string{adminDrop.text()})
}
