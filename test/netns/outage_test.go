package netns_test

import (
	"fmt"
	"net/netip"
	"testing"
	"time"

	"github.com/vtepd/vtepd/test/netns"
	"golang.org/x/sys/unix"
)

// TestEstablishedFlowsSurviveVtepdOutage: traffic between containers that
// were already talking loses nothing while the receiving host's vtepd is
// away, killed with SIGKILL, for 1 s and for 20 s, at 100 packets a second.
// Answers are PERMANENT entries, which do not age: nothing asks vtepd about
// them while it is away.
//
// The 20 s outage is waited out for real: it is the length the issue that
// asked for this measured loss at (736 of 3200 with aging answers), and a
// shorter one would not show that nothing ages. To make aging answers fail
// well within it, both hosts' neighbour timers are shortened before the
// first answer (a REACHABLE entry would go STALE within 1.5 s, then DELAY,
// PROBE and FAILED a few seconds later): with answers that age, the 20 s
// case loses packets every time. The test runs in parallel with others.
func TestEstablishedFlowsSurviveVtepdOutage(t *testing.T) {
	t.Parallel()
	o := newOverlay(t, "vtoutage", 2, 2)
	sender, receiver := o.hosts[0], o.hosts[1]
	for _, h := range o.hosts {
		for name, value := range map[string]string{"base_reachable_time_ms": "1000", "delay_first_probe_time": "1"} {
			if _, err := h.Exec("sysctl", "-qw", fmt.Sprintf("net/ipv4/neigh/%s/%s=%s", device, name, value)); err != nil {
				t.Fatal(err)
			}
		}
	}
	for _, outage := range []time.Duration{time.Second, 20 * time.Second} {
		t.Run(outage.String(), func(t *testing.T) {
			target := sender.Container.Extra[0]
			if outage > time.Second {
				target = sender.Container.Extra[1] // a pair of its own
			}
			// The flow is established first: its entries are answered on
			// both hosts (the reply path's on the receiver).
			firstPing(t, receiver, target)
			flow := startFlow(t, receiver, target)
			receiver.Vtepd.Kill()
			time.Sleep(outage) // the outage itself: what is measured
			if _, err := receiver.StartVtepd(); err != nil {
				t.Fatal(err)
			}
			// A second more of traffic once vtepd is back.
			res := stopFlowAfter(t, flow, 100, 10*time.Second)
			t.Logf("vtepd on %s away for %v: %d of %d lost at 100/s", receiver.Name, outage, len(res.Lost), res.Sent)
			// The flow spans the outage (it ran before the kill and after
			// the restart); at half its rate at least throughout, it did
			// not stall in it, on a loaded machine too.
			if len(res.Lost) > 0 || res.Sent < int(outage/(20*time.Millisecond)) {
				t.Errorf("ping at 100/s across a %v vtepd outage: %d sent, %d received, lost %v; want no loss", outage, res.Sent, res.Received, res.Lost)
			}
			// What carried the flow through is PERMANENT on the receiver.
			k, err := receiver.Kernel(device)
			if err != nil {
				t.Fatal(err)
			}
			for _, n := range k.Neighbours {
				if n.IP == target && n.State&unix.NUD_PERMANENT == 0 {
					t.Errorf("%s's entry for %s is %d, want PERMANENT", receiver.Name, target, n.State)
				}
			}
		})
	}
}

// TestIdlePeersForgotten: PERMANENT answers do not age, so vtepd removes
// them itself once nothing has been sent to their peer for --idle-timeout
// (2 s here, so that the test waits seconds, not the default 5 min); a
// peer still talked to keeps its entries, and a forgotten peer is answered
// afresh, first packet delivered.
func TestIdlePeersForgotten(t *testing.T) {
	t.Parallel()
	o := newOverlay(t, "vtidle", 0, 0)
	h1 := o.addHost(t, 2, "--idle-timeout", "2s")
	h2, h3 := o.addHost(t, 2), o.addHost(t, 2)
	firstPing(t, h1, h2.Container.Addr)
	firstPing(t, h1, h3.Container.Addr)
	// h3 stays in use: 5 packets a second, far more often than 2 s.
	busy, err := h1.Container.StartFlow(h3.Container.Addr, 200*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { busy.Stop() })
	h2MAC := leaseOf(t, o, mustSubnet(t, h2)).VtepMAC
	h3MAC := leaseOf(t, o, mustSubnet(t, h3)).VtepMAC
	took, err := goneWithin(t, h1, h2MAC, mustSubnet(t, h2), 10*time.Second)
	if err != nil {
		t.Fatalf("entries of an idle peer: %v", err)
	}
	// 2 s of idleness, checked every 0.5 s.
	t.Logf("entries for idle %s gone %v after the last packet to it", h2.Name, took.Round(10*time.Millisecond))
	if len(pointingAt(t, h1, h3MAC, mustSubnet(t, h3))) < 2 {
		t.Errorf("the busy peer %s lost its entries on %s: %v", h3.Name, h1.Name, pointingAt(t, h1, h3MAC, mustSubnet(t, h3)))
	}
	if res := busy.Stop(); res.Sent == 0 || len(res.Lost) > 0 {
		t.Errorf("flow to the busy peer while an idle one was forgotten: %d sent, %d received, lost %v", res.Sent, res.Received, res.Lost)
	}
	if _, err := h1.Vtepd.WaitEntries("removed the entries of idle peers", 1, 2*time.Second); err != nil {
		t.Errorf("no log line says idle peers' entries were removed: %v", err)
	}
	firstPing(t, h1, h2.Container.Extra[0])
}

// TestNeighbourLimit: past --neighbour-limit PERMANENT entries, answers are
// REACHABLE, so that the kernel's own table limit bounds them as it bounds
// every other entry; they age, and while used they are re-confirmed by
// PROBE misses without loss.
func TestNeighbourLimit(t *testing.T) {
	t.Parallel()
	o := newOverlay(t, "vtnlimit", 0, 0) // vtlimit is TestNeighbourTableLimit's
	h1 := o.addHost(t, 0, "--neighbour-limit", "3")
	h2 := o.addHost(t, 4)
	for name, v := range map[string]string{"base_reachable_time_ms": "1000", "delay_first_probe_time": "1"} {
		if err := h1.Sysctl("net/ipv4/neigh/"+device+"/"+name, v); err != nil {
			t.Fatal(err)
		}
	}
	agingPastLimit(t, h1, append([]netip.Addr{h2.Container.Addr}, h2.Container.Extra...), 3)
}

// agingPastLimit pings targets (five, fresh) once each from h1's container,
// whose vtepd runs with --neighbour-limit 3 and whose neighbour timers are
// short: the first three answers are PERMANENT, the others REACHABLE; a
// flow to the last is re-confirmed by probes PROBE misses without loss and
// without the entry failing, and stays REACHABLE.
func agingPastLimit(t *testing.T, h1 *netns.Host, targets []netip.Addr, probes int) {
	t.Helper()
	for _, a := range targets {
		firstPing(t, h1, a)
	}
	var permanents []netip.Addr
	for _, a := range targets {
		if permanent(t, h1, a) {
			permanents = append(permanents, a)
		}
	}
	if len(permanents) != 3 {
		t.Errorf("%d PERMANENT answers on %s with --neighbour-limit 3: %v", len(permanents), h1.Name, permanents)
	}
	last := targets[len(targets)-1]
	if permanent(t, h1, last) {
		t.Fatalf("%s, answered past the limit, is PERMANENT", last)
	}
	flow, err := h1.Container.StartFlow(last, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	err = netns.Poll(20*time.Second, func() error {
		if n := missesFor(h1, last)["PROBE/answered"]; n < probes {
			return fmt.Errorf("%d PROBE misses answered for %s", n, last)
		}
		return nil
	})
	res := flow.Stop() // waits for the replies still due: a loss is a loss
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s past the limit: %v over %d pings", last, missesFor(h1, last), res.Sent)
	if res.Sent == 0 || len(res.Lost) > 0 {
		t.Errorf("ping at 10/s through an aging entry: %d sent, %d received, lost %v; want no loss", res.Sent, res.Received, res.Lost)
	}
	if n := missesFor(h1, last)["INCOMPLETE/answered"]; n != 1 {
		t.Errorf("%d INCOMPLETE misses for %s, want the first alone: the aging entry failed and was resolved anew", n, last)
	}
	if permanent(t, h1, last) {
		t.Errorf("%s was made PERMANENT past the limit", last)
	}
}
