package netns_test

import (
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vtepd/vtepd/store"
	"github.com/vtepd/vtepd/test/netns"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// TestLeaseChurn: what vtepd installed never outlives the truth in etcd. A
// removed or expired lease takes its entries with it within a second of the
// etcd event; a changed one (a rebuilt host with a new VTEP MAC, a host with
// a new public IP) has its entries re-pointed, and traffic to a rebuilt host
// works again without restarting anyone.
func TestLeaseChurn(t *testing.T) {
	t.Parallel()
	o := newOverlay(t, "vtchurn", 2, 4)
	h1, h2 := o.hosts[0], o.hosts[1]
	c := etcdClient(t, o.lab)
	fakes := newFakes(t, c, 3)

	t.Run("removed lease", func(t *testing.T) {
		f := fakes[0]
		put(t, c, f.Key(), f.Value())
		if err := installedFor(t, h1, f.Addr(5), f.MAC, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		del(t, c, f.Key())
		took, err := goneWithin(t, h1, f.MAC, f.Subnet, 5*time.Second)
		if err != nil || took > time.Second {
			t.Errorf("entries of a deleted lease gone after %v (want < 1s): %v", took, err)
		}
		t.Logf("entries of a deleted lease gone %v after the delete", took.Round(time.Millisecond))
	})

	t.Run("expired lease", func(t *testing.T) {
		f := fakes[1]
		grant, err := c.Grant(ctxFor(t, 5*time.Second), 3)
		if err != nil {
			t.Fatal(err)
		}
		put(t, c, f.Key(), f.Value(), clientv3.WithLease(grant.ID))
		if err := installedFor(t, h1, f.Addr(5), f.MAC, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		// The etcd event is the key's disappearance when its lease expires.
		err = netns.Poll(15*time.Second, func() error {
			resp, err := c.Get(ctxFor(t, 5*time.Second), f.Key())
			if err == nil && len(resp.Kvs) > 0 {
				return errStillThere
			}
			return err
		})
		if err != nil {
			t.Fatalf("lease did not expire: %v", err)
		}
		took, err := goneWithin(t, h1, f.MAC, f.Subnet, 5*time.Second)
		if err != nil || took > time.Second {
			t.Errorf("entries of an expired lease gone %v after the key (want < 1s): %v", took, err)
		}
	})

	t.Run("new public IP", func(t *testing.T) {
		f := fakes[2]
		put(t, c, f.Key(), f.Value())
		if err := installedFor(t, h1, f.Addr(5), f.MAC, 10*time.Second); err != nil {
			t.Fatal(err)
		}
		moved := f
		moved.PublicIP = netip.MustParseAddr("198.51.100.199")
		put(t, c, moved.Key(), moved.Value())
		err := netns.Poll(time.Second, func() error {
			got := pointingAt(t, h1, f.MAC, f.Subnet)
			for _, e := range got {
				if strings.HasPrefix(e, "fdb") && !strings.HasSuffix(e, "dst 198.51.100.199") {
					return errStillThere
				}
			}
			if !slices.Contains(got, "fdb "+f.MAC.String()+" dst 198.51.100.199") {
				return errStillThere
			}
			return nil
		})
		if err != nil {
			t.Errorf("FDB entry not moved to the new public IP within 1s: %v", pointingAt(t, h1, f.MAC, f.Subnet))
		}
	})

	t.Run("rebuilt host with a new VTEP MAC", func(t *testing.T) {
		env, err := h2.Subnet()
		if err != nil {
			t.Fatal(err)
		}
		subnet := env.Subnet.Masked()
		oldLease := leaseOf(t, o, subnet)
		firstPing(t, h1, h2.Container.Extra[0])
		if got := pointingAt(t, h1, oldLease.VtepMAC, subnet); len(got) == 0 {
			t.Fatalf("test bug: %s holds nothing for %s yet", h1.Name, h2.Name)
		}

		// 100 pings a second from h1 to h2 across the rebuild.
		flow := startFlow(t, h1, h2.Container.Extra[0])

		// The host comes back with the same address, a new VXLAN device
		// with a new MAC, and keeps its subnet: the lease changes in place.
		newMAC := "02:be:e1:00:00:02"
		h2.Vtepd.Kill()
		for _, cmd := range [][]string{
			{"ip", "link", "del", device},
			{"ip", "link", "add", device, "address", newMAC, "type", "vxlan", "id", "1", "dstport", "8472",
				"local", h2.IP.String(), "dev", "eth0", "nolearning", "proxy", "l2miss", "l3miss"},
			{"ip", "link", "set", device, "up"},
		} {
			if _, err := h2.Exec(cmd...); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := h2.StartVtepd(); err != nil {
			t.Fatal(err)
		}
		rebuilt := leaseOf(t, o, subnet)
		if rebuilt.VtepMAC.String() != newMAC {
			t.Fatalf("lease after the rebuild says %s, want %s", rebuilt.VtepMAC, newMAC)
		}
		took, err := goneWithin(t, h1, oldLease.VtepMAC, netip.Prefix{}, 5*time.Second)
		if err != nil || took > time.Second {
			t.Errorf("entries for the old VTEP MAC gone %v after the change (want < 1s): %v", took, err)
		}
		// Traffic to the rebuilt host comes back: half a second of it.
		res := stopFlowAfter(t, flow, 50, 10*time.Second)
		lost := len(res.Lost)
		t.Logf("rebuild: ping at 100/s lost %d of %d (%v without traffic, vtepd restart on the rebuilt host included)",
			lost, res.Sent, time.Duration(lost)*10*time.Millisecond)
		if res.Received == 0 || lost > 300 {
			t.Errorf("traffic to the rebuilt host did not come back: %d of %d received", res.Received, res.Sent)
		}
		firstPing(t, h1, h2.Container.Extra[1])
		for _, e := range pointingAt(t, h1, store.MAC{}, subnet) {
			if !strings.Contains(e, newMAC) {
				t.Errorf("%s still holds %s", h1.Name, e)
			}
		}
	})
}

// TestRestartWithoutLoss: vtepd killed with SIGKILL on both ends of a flow
// and restarted costs no packet, and entries planted while it was away are
// reconciled away.
func TestRestartWithoutLoss(t *testing.T) {
	t.Parallel()
	o := newOverlay(t, "vtrestart", 2, 2)
	h1, h2 := o.hosts[0], o.hosts[1]
	firstPing(t, h1, h2.Container.Addr)

	flow := startFlow(t, h1, h2.Container.Addr)
	h1.Vtepd.Kill()
	h2.Vtepd.Kill()

	// Stale state appears while no vtepd watches: an entry for the peer's
	// subnet pointing at a VTEP that does not exist, an FDB entry for it, and
	// a neighbour with no lease at all.
	bogus := "02:de:ad:be:ef:01"
	h2Subnet := leaseOf(t, o, mustSubnet(t, h2)).Subnet
	staleNeigh := h2Subnet.Addr().Next().Next().Next().Next().Next().Next().Next() // .7
	for _, cmd := range [][]string{
		{"ip", "neigh", "replace", staleNeigh.String(), "dev", device, "lladdr", bogus, "nud", "reachable"},
		{"ip", "neigh", "replace", "10.5.253.9", "dev", device, "lladdr", bogus, "nud", "permanent"},
		{"bridge", "fdb", "add", bogus, "dev", device, "dst", "198.51.100.250", "self", "permanent"},
	} {
		if _, err := h1.Exec(cmd...); err != nil {
			t.Fatal(err)
		}
	}

	for _, h := range []*netns.Host{h1, h2} {
		if _, err := h.StartVtepd(); err != nil {
			t.Fatal(err)
		}
	}
	// Half a second more of traffic after both are back.
	res := stopFlowAfter(t, flow, 50, 10*time.Second)
	if len(res.Lost) > 0 {
		t.Errorf("ping at 100/s across kill -9 and restart of both vtepds: %d sent, %d received, lost %v; want no loss", res.Sent, res.Received, res.Lost)
	}
	bogusMAC, _ := store.ParseMAC(bogus)
	if left := pointingAt(t, h1, bogusMAC, netip.MustParsePrefix("10.5.253.0/24")); len(left) > 0 {
		t.Errorf("stale entries survived the restart: %v", left)
	}
	rec := h1.Vtepd.Entries("device entries reconciled")
	if len(rec) != 1 {
		t.Fatalf("%d reconciliation reports from the restarted vtepd, want 1", len(rec))
	}
	last := rec[0]
	t.Logf("reconciliation on %s after the restart: kept %v fixed %v removed %v answered %v",
		h1.Name, last["kept"], last["fixed"], last["removed"], last["answered"])
	if logInt(t, last, "fixed") < 1 || logInt(t, last, "removed") < 2 || logInt(t, last, "kept") < 2 {
		t.Errorf("reconciliation %v: want the right entries kept, the stale neighbour fixed, the unknown ones removed", last)
	}
}

func mustSubnet(t *testing.T, h *netns.Host) netip.Prefix {
	t.Helper()
	env, err := h.Subnet()
	if err != nil {
		t.Fatal(err)
	}
	return env.Subnet.Masked()
}

type stillThere struct{}

func (stillThere) Error() string { return "still there" }

var errStillThere error = stillThere{}
