package netns_test

import (
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vtepd/vtepd/test/netns"
)

// Docker hosts as they really are (issue 7) and vtepd's ip-masq (issue 6):
// a FORWARD policy of DROP, Docker's DOCKER-USER chain and its masquerade,
// simulated with the same iptables commands dockerd runs.

// needFirewallTools skips a test that needs iptables and nft.
func needFirewallTools(t *testing.T) {
	t.Helper()
	for _, tool := range []string{"iptables", "nft"} {
		if _, err := exec.LookPath(tool); err != nil {
			t.Skipf("skipping: %s not installed (Debian packages iptables, nftables; make test installs them)", tool)
		}
	}
}

// dockerOverlay is a lab whose hosts are set up as Docker leaves a host
// before vtepd starts: FORWARD policy DROP and, with dockerUser, Docker's
// DOCKER-USER chain (a jump to it first in FORWARD, RETURN at its end).
func dockerOverlay(t *testing.T, name string, hosts []dockerHost) *overlay {
	t.Helper()
	needFirewallTools(t)
	lab := newLab(t, name)
	if _, err := lab.StartEtcd(); err != nil {
		t.Fatal(err)
	}
	if err := lab.PutNetworkConfig(ctxFor(t, 10*time.Second), overlayConfig); err != nil {
		t.Fatal(err)
	}
	o := &overlay{lab: lab}
	for _, dh := range hosts {
		h, err := lab.AddHost()
		if err != nil {
			t.Fatal(err)
		}
		mustExec(t, h, "iptables", "-P", "FORWARD", "DROP")
		if dh.dockerUser {
			mustExec(t, h, "iptables", "-N", "DOCKER-USER")
			mustExec(t, h, "iptables", "-A", "DOCKER-USER", "-j", "RETURN")
			mustExec(t, h, "iptables", "-I", "FORWARD", "1", "-j", "DOCKER-USER")
		}
		if _, err := h.StartVtepd(dh.args...); err != nil {
			t.Fatal(err)
		}
		if _, err := h.AddContainer(4); err != nil {
			t.Fatal(err)
		}
		o.hosts = append(o.hosts, h)
	}
	return o
}

type dockerHost struct {
	dockerUser bool
	args       []string
}

func mustExec(t *testing.T, h *netns.Host, args ...string) string {
	t.Helper()
	out, err := h.Exec(args...)
	if err != nil {
		t.Fatal(err)
	}
	return out
}

// vtepdRules lists the iptables rules vtepd's comment marks in chain.
func vtepdRules(t *testing.T, h *netns.Host, chain string) []string {
	t.Helper()
	var out []string
	for _, l := range strings.Split(mustExec(t, h, "iptables", "-S", chain), "\n") {
		if strings.Contains(l, `"vtepd: forward`) {
			out = append(out, l)
		}
	}
	return out
}

// TestForwardDrop: on hosts whose FORWARD policy is DROP, as Docker leaves
// it, containers of different hosts reach each other, first packet
// included, with vtepd's forward rules at the top of DOCKER-USER where
// Docker made one and of FORWARD where not; without them nothing crosses.
// Rules flushed behind vtepd's back come back; a clean stop removes them.
func TestForwardDrop(t *testing.T) {
	t.Parallel()
	// The rules are checked every second, not every 5 s: the flush
	// below is repaired at the next check.
	resync := []string{"--iptables-resync", "1"}
	o := dockerOverlay(t, "vtfwd", []dockerHost{
		{dockerUser: false, args: resync},
		{dockerUser: true, args: resync},
		{dockerUser: false, args: append([]string{"--forward-rules=false"}, resync...)},
	})
	h1, h2, h3 := o.hosts[0], o.hosts[1], o.hosts[2]

	for _, pair := range [][2]*netns.Host{{h1, h2}, {h2, h1}} {
		from, to := pair[0], pair[1]
		for _, a := range []netip.Addr{to.Container.Addr, to.Container.Extra[0]} {
			firstPing(t, from, a)
		}
	}
	if got := vtepdRules(t, h1, "FORWARD"); len(got) != 2 {
		t.Errorf("h1 (no Docker chain): vtepd's rules in FORWARD: %q, want 2", got)
	}
	if got := vtepdRules(t, h2, "DOCKER-USER"); len(got) != 2 {
		t.Errorf("h2 (Docker): vtepd's rules in DOCKER-USER: %q, want 2", got)
	}
	if got := mustExec(t, h2, "iptables", "-S", "DOCKER-USER"); !strings.HasSuffix(strings.TrimSpace(got), "-A DOCKER-USER -j RETURN") {
		t.Errorf("h2's DOCKER-USER does not end with Docker's RETURN:\n%s", got)
	}

	// The control: h3 runs without forward rules, and its DROP policy
	// drops what the others send its container.
	for range 2 {
		if ok, _, err := h1.Container.Echo(h3.Container.Addr, time.Second); err != nil || ok {
			t.Errorf("h3 forwarded a ping (%v) with --forward-rules=false and FORWARD DROP: the test proves nothing", err)
		}
	}

	// dockerd restarting flushes DOCKER-USER: vtepd puts its rules back,
	// at its next check. Flushed twice, the second time right after the
	// first repair, so that the second repair comes one period later:
	// within 3 s, for the 1 s asked for (with room for a loaded machine),
	// where the default would take 5.
	flush := func() {
		mustExec(t, h2, "iptables", "-F", "DOCKER-USER")
		mustExec(t, h2, "iptables", "-A", "DOCKER-USER", "-j", "RETURN")
	}
	repaired := func(within time.Duration) {
		t.Helper()
		err := netns.Poll(within, func() error {
			if got := vtepdRules(t, h2, "DOCKER-USER"); len(got) != 2 {
				return fmt.Errorf("vtepd's rules in DOCKER-USER: %q", got)
			}
			return nil
		})
		if err != nil {
			t.Fatalf("after a flush: %v", err)
		}
	}
	flush()
	repaired(10 * time.Second)
	first := time.Now()
	flush()
	repaired(3 * time.Second)
	t.Logf("rules flushed right after a repair were back %v later (--iptables-resync 1)", time.Since(first).Round(10*time.Millisecond))
	firstPing(t, h1, h2.Container.Extra[1])
	// It says so once the rules are back: a moment after the poll above
	// may have seen them.
	if err := netns.Poll(2*time.Second, func() error {
		if countLog(h2, "firewall rules restored", "", "") == 0 {
			return errStillThere
		}
		return nil
	}); err != nil {
		t.Errorf("h2 restored its rules without saying so")
	}

	// A clean stop takes the rules away; a restart puts them back, once.
	if err := h1.Vtepd.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if got := vtepdRules(t, h1, "FORWARD"); len(got) != 0 {
		t.Errorf("after a clean stop, h1 still has %q", got)
	}
	if _, err := h1.StartVtepd(); err != nil {
		t.Fatal(err)
	}
	if got := vtepdRules(t, h1, "FORWARD"); len(got) != 2 {
		t.Errorf("after a restart, vtepd's rules in FORWARD: %q, want 2", got)
	}
	firstPing(t, h2, h1.Container.Extra[2])
}

// whoAmI asks the whoami server at addr, from the container c, which
// source address it saw.
func whoAmI(t *testing.T, c *netns.Container, bin string, addr netip.Addr) netip.Addr {
	t.Helper()
	var out string
	err := netns.Poll(10*time.Second, func() error {
		var err error
		out, err = c.Exec(bin, "--connect", netip.AddrPortFrom(addr, 7070).String(), "--timeout", "2s")
		return err
	})
	if err != nil {
		t.Fatalf("whoami %s from %s: %v", addr, c.NS, err)
	}
	a, err := netip.ParseAddr(strings.TrimSpace(out))
	if err != nil {
		t.Fatalf("whoami %s answered %q", addr, out)
	}
	return a
}

func serveWhoAmI(t *testing.T, lab *netns.Lab, ns string) {
	t.Helper()
	if _, err := lab.Start(ns, ns+".whoami", lab.Bin.WhoAmI, "--listen", ":7070"); err != nil {
		t.Fatal(err)
	}
}

// TestIPMasq: with --ip-masq, a container reaches a host outside the
// overlay with its source rewritten to its host's address, and reaches
// containers of other hosts with its own address, even with Docker's own
// masquerade of the bridge in place (dockerd run without --ip-masq=false).
// The rules survive a crash and a restart as one set, and go on a clean
// stop.
func TestIPMasq(t *testing.T) {
	t.Parallel()
	o := dockerOverlay(t, "vtmasq", []dockerHost{
		{args: []string{"--ip-masq"}},
		{dockerUser: true, args: []string{"--ip-masq"}},
	})
	h1, h2 := o.hosts[0], o.hosts[1]
	outside, err := o.lab.AddOutside()
	if err != nil {
		t.Fatal(err)
	}
	serveWhoAmI(t, o.lab, outside.NS)
	serveWhoAmI(t, o.lab, h2.Container.NS)
	bin := o.lab.Bin.WhoAmI

	check := func(t *testing.T, when string) {
		t.Helper()
		if got := whoAmI(t, h1.Container, bin, outside.Addr); got != h1.IP {
			t.Errorf("%s: the outside host saw %s, want h1's address %s", when, got, h1.IP)
		}
		if got := whoAmI(t, h1.Container, bin, h2.Container.Addr); got != h1.Container.Addr {
			t.Errorf("%s: h2's container saw %s, want h1's container %s", when, got, h1.Container.Addr)
		}
	}
	check(t, "vtepd --ip-masq")

	// Docker's masquerade of its bridge, as dockerd without
	// --ip-masq=false installs it: everything from the bridge's subnet
	// not leaving through the bridge.
	env, err := h1.Subnet()
	if err != nil {
		t.Fatal(err)
	}
	if !env.IPMasq {
		t.Errorf("h1's subnet file says FLANNEL_IPMASQ=false under --ip-masq")
	}
	mustExec(t, h1, "iptables", "-t", "nat", "-A", "POSTROUTING", "-s", env.Subnet.Masked().String(), "!", "-o", "cbr0", "-j", "MASQUERADE")
	check(t, "with Docker's MASQUERADE")

	masqRules := func(h *netns.Host) int {
		out, err := h.Exec("nft", "list", "table", "ip", "vtepd-nat-flannel.1")
		if err != nil {
			return 0
		}
		return strings.Count(out, `comment "vtepd: `)
	}
	if n := masqRules(h1); n != 4 {
		t.Errorf("h1 holds %d ip-masq rules, want 4", n)
	}
	// A crash leaves them; the next vtepd keeps the one set.
	h1.Vtepd.Kill()
	if _, err := h1.StartVtepd("--ip-masq"); err != nil {
		t.Fatal(err)
	}
	if n := masqRules(h1); n != 4 {
		t.Errorf("after a crash and a restart, h1 holds %d ip-masq rules, want 4", n)
	}
	check(t, "after a restart")
	// A clean stop removes them; a start without --ip-masq removes what
	// a crashed vtepd with it left.
	if err := h1.Vtepd.Stop(10 * time.Second); err != nil {
		t.Fatal(err)
	}
	if n := masqRules(h1); n != 0 {
		t.Errorf("after a clean stop, h1 holds %d ip-masq rules", n)
	}
	h2.Vtepd.Kill()
	if _, err := h2.StartVtepd(); err != nil {
		t.Fatal(err)
	}
	// Removing them is no part of being ready (the subnet file promises
	// no masquerade): they go a moment after.
	err = netns.Poll(5*time.Second, func() error {
		if n := masqRules(h2); n != 0 {
			return fmt.Errorf("h2 restarted without --ip-masq still holds %d ip-masq rules", n)
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
}

// TestRestartInPlace: SIGHUP makes vtepd execute itself again (the upgrade
// path, systemctl reload): same PID, and not one packet lost on a FORWARD
// DROP host with ip-masq, because the rules a clean stop would remove stay.
func TestRestartInPlace(t *testing.T) {
	t.Parallel()
	o := dockerOverlay(t, "vtreexec", []dockerHost{
		{dockerUser: true, args: []string{"--ip-masq"}},
		{args: []string{"--ip-masq"}},
	})
	h1, h2 := o.hosts[0], o.hosts[1]
	firstPing(t, h1, h2.Container.Addr)
	flow := startFlow(t, h1, h2.Container.Addr)
	pid := h1.Vtepd.Pid()
	if err := h1.Vtepd.Signal(syscall.SIGHUP); err != nil {
		t.Fatal(err)
	}
	err := netns.Poll(30*time.Second, func() error {
		if n := len(h1.Vtepd.Entries("vtepd ready")); n < 2 {
			return fmt.Errorf("%d ready lines", n)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("vtepd not ready again after SIGHUP: %v\n%s", err, h1.Vtepd.Tail(20))
	}
	if done, err := h1.Vtepd.Exited(); done {
		t.Fatalf("vtepd exited on SIGHUP: %v", err)
	}
	if h1.Vtepd.Pid() != pid {
		t.Errorf("PID changed")
	}
	res := stopFlowAfter(t, flow, 50, 10*time.Second)
	if len(res.Lost) > 0 {
		t.Errorf("through the restart in place: %d of %d pings answered, lost %v", res.Received, res.Sent, res.Lost)
	}
	if countLog(h1, "firewall rules left in place for the next vtepd", "", "") != 1 {
		t.Errorf("the handover did not keep the firewall rules")
	}
	if got := vtepdRules(t, h1, "DOCKER-USER"); len(got) != 2 {
		t.Errorf("after the restart in place, vtepd's rules in DOCKER-USER: %q", got)
	}
}
