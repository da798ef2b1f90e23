package netns_test

import (
	"encoding/json"
	"fmt"
	"net/netip"
	"strconv"
	"testing"
	"time"

	"github.com/vtepd/vtepd/store"
	"github.com/vtepd/vtepd/test/netns"
	"golang.org/x/sys/unix"
)

// stormConfig gives every host a /20: thousands of addresses behind one peer.
const stormConfig = `{"Network":"10.6.0.0/16","SubnetLen":20,"Backend":{"Type":"vxlan"}}`

// newStormOverlay is a two-host lab on stormConfig; h1's vtepd gets extra
// arguments.
func newStormOverlay(t *testing.T, name string, h1Args ...string) *overlay {
	t.Helper()
	lab := newLab(t, name)
	if _, err := lab.StartEtcd(); err != nil {
		t.Fatal(err)
	}
	if err := lab.PutNetworkConfig(ctxFor(t, 10*time.Second), stormConfig); err != nil {
		t.Fatal(err)
	}
	o := &overlay{lab: lab}
	o.addHost(t, 2, h1Args...)
	o.addHost(t, 2)
	return o
}

// burst sends one datagram from h's container to each of count addresses
// from start on.
func burst(t *testing.T, o *overlay, h *netns.Host, start netip.Addr, count int) (sent, errs int) {
	t.Helper()
	out, err := h.Container.Exec(o.lab.Bin.Burst, "--start", start.String(), "--count", strconv.Itoa(count))
	if err != nil {
		t.Fatalf("burst: %v", err)
	}
	var s struct {
		Sent, Errors int
		First        string `json:"first_error"`
	}
	if err := json.Unmarshal([]byte(out), &s); err != nil {
		t.Fatalf("burst output %q: %v", out, err)
	}
	if s.First != "" {
		t.Logf("burst: first send error: %s", s.First)
	}
	return s.Sent, s.Errors
}

// resolved counts h's neighbour entries in subnet that point at mac.
func resolved(t *testing.T, h *netns.Host, subnet netip.Prefix, mac store.MAC) int {
	t.Helper()
	n, _ := neighbourStates(t, h, subnet, mac)
	return n
}

// neighbourStates counts h's neighbour entries in subnet that point at
// mac, and those still being resolved (INCOMPLETE).
func neighbourStates(t *testing.T, h *netns.Host, subnet netip.Prefix, mac store.MAC) (resolved, incomplete int) {
	t.Helper()
	k, err := h.Kernel(device)
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range k.Neighbours {
		switch {
		case !subnet.Contains(e.IP):
		case e.State&unix.NUD_INCOMPLETE != 0:
			incomplete++
		case len(e.MAC) == 6 && store.MAC(e.MAC) == mac && e.State&unix.NUD_FAILED == 0:
			resolved++
		}
	}
	return resolved, incomplete
}

// TestMissStorm: thousands of distinct destinations at once do not wedge
// the daemon. With a receive buffer too small for the burst, the socket
// overflows; vtepd counts it, reads on without sleeping, and answers the
// kernel's retries (app_solicit repeats each request once a second).
func TestMissStorm(t *testing.T) {
	ownNeighbourTable(t) // not parallel: the table and its limits are the kernel's
	restore, err := netns.RaiseNeighbourLimits(16384, 32768, 65536)
	if err != nil {
		t.Fatal(err)
	}
	// Registered before the lab's own cleanup, so it runs after it: the
	// limits go back once the lab's entries are gone.
	t.Cleanup(func() {
		if err := restore(); err != nil {
			t.Errorf("restoring the neighbour limits: %v", err)
		}
	})
	o := newStormOverlay(t, "vtstorm", "--netlink-rcvbuf", "131072", "--report-interval", "1s")
	h1, h2 := o.hosts[0], o.hosts[1]
	peer := leaseOf(t, o, mustSubnet(t, h2))
	const n = 4000
	first := peer.Subnet.Addr()
	for range 16 {
		first = first.Next()
	}

	start := time.Now()
	sent, errs := burst(t, o, h1, first, n)
	if sent+errs != n {
		t.Fatalf("burst sent %d, %d errors, want %d", sent, errs, n)
	}
	var at95, atAll time.Duration
	err = netns.Poll(10*time.Second, func() error {
		got := resolved(t, h1, peer.Subnet, peer.VtepMAC)
		if got >= n*95/100 && at95 == 0 {
			at95 = time.Since(start)
		}
		if got < n {
			return fmt.Errorf("%d of %d destinations answered", got, n)
		}
		atAll = time.Since(start)
		return nil
	})
	if err != nil {
		t.Errorf("after the storm: %v", err)
	}
	// The periodic summary counts the overflows; wait for it.
	var overflows int
	netns.Poll(5*time.Second, func() error {
		if overflows = summed(h1, "netlink_overflows"); overflows == 0 {
			return errStillThere
		}
		return nil
	})
	swept := 0
	sweeps := h1.Vtepd.Entries("miss socket overflowed; answered the addresses still pending")
	for _, e := range sweeps {
		swept += logInt(t, e, "answered")
	}
	t.Logf("storm of %d: 95%% answered after %v, all after %v; %d socket overflows, %d sweeps answered %d lost misses",
		n, at95.Round(time.Millisecond), atAll.Round(time.Millisecond), overflows, len(sweeps), swept)
	if overflows == 0 || len(sweeps) == 0 {
		t.Errorf("the socket never overflowed (%d) or was never swept (%d): the test did not test recovery from ENOBUFS", overflows, len(sweeps))
	}
	if done, err := h1.Vtepd.Exited(); done {
		t.Fatalf("vtepd stopped: %v", err)
	}
	firstPing(t, h1, h2.Container.Addr)
}

// TestNeighbourTableLimit documents what happens at the kernel's own limit:
// the ARP table is one table for the whole kernel, capped by gc_thresh3
// (1024 by default). A burst to 2000 fresh addresses cannot all get an entry:
// the kernel refuses to create the rest, so their packets are dropped with
// no miss for vtepd to see (its table_full count stays 0 here; it counts a
// write refused when an entry vanished between miss and answer). vtepd
// answers those the kernel could create, keeps running, and traffic resumes
// once the kernel's garbage collection makes room.
func TestNeighbourTableLimit(t *testing.T) {
	limits, err := netns.NeighbourLimits()
	if err != nil {
		t.Fatal(err)
	}
	if limits[2] != "1024" {
		t.Skipf("gc_thresh3 is %s on this machine; this test documents the default 1024", limits[2])
	}
	ownNeighbourTable(t) // not parallel: it fills the kernel's one table
	o := newStormOverlay(t, "vtlimit", "--report-interval", "1s")
	h1, h2 := o.hosts[0], o.hosts[1]
	peer := leaseOf(t, o, mustSubnet(t, h2))
	const n = 2000
	first := peer.Subnet.Addr()
	for range 16 {
		first = first.Next()
	}
	sent, errs := burst(t, o, h1, first, n)
	// Let the kernel's three application probes (1 s apart) run out
	// before counting what got answered: until no entry of the burst is
	// still being resolved.
	var got int
	err = netns.Poll(10*time.Second, func() error {
		var incomplete int
		if got, incomplete = neighbourStates(t, h1, peer.Subnet, peer.VtepMAC); incomplete > 0 {
			return fmt.Errorf("%d entries still being resolved", incomplete)
		}
		return nil
	})
	if err != nil {
		t.Fatalf("after the burst: %v", err)
	}
	t.Logf("burst of %d at gc_thresh3=1024: %d sent, %d refused by the kernel at send; %d answered entries", n, sent, errs, got)
	if got == 0 {
		t.Errorf("no entry answered at the table's limit; want those the kernel could create")
	}
	if done, err := h1.Vtepd.Exited(); done {
		t.Fatalf("vtepd stopped: %v", err)
	}
	// The table is full of recent entries; forced GC frees those unused for
	// 5 s. A new destination is answered again after that.
	err = netns.Poll(30*time.Second, func() error {
		if ok, _, err := h1.Container.Echo(h2.Container.Addr, time.Second); err != nil || !ok {
			return fmt.Errorf("ping after the burst: lost (%v)", err)
		}
		return nil
	})
	if err != nil {
		t.Errorf("traffic did not resume after the table filled: %v", err)
	}
}
