package miss

import (
	"net/netip"
	"strings"
	"testing"
	"time"

	"github.com/vtepd/vtepd/fabric"
	"github.com/vtepd/vtepd/store"
	"go.uber.org/zap"
)

// newDirectResponder answers with DirectRouting: peers whose public IP is
// in 192.0.2.0/24 are on this host's segment.
func newDirectResponder(leases ...store.Lease) (*Responder, *fakeLeases, *stateKernel) {
	fl := &fakeLeases{leases: append([]store.Lease{ownLease}, leases...)}
	k := newStateKernel()
	cfg := testConfig
	cfg.Gateway = ownLease.Gateway()
	segment := netip.MustParsePrefix("192.0.2.0/24")
	cfg.Direct = segment.Contains
	return NewResponder(cfg, fl, k, zap.NewNop()), fl, k
}

func directTo(l store.Lease) fabric.Route {
	return fabric.Route{Dst: l.Subnet, Via: l.PublicIP, Direct: true}
}

// TestDirectRouting: the first miss towards a peer on this host's segment
// installs a route for its subnet via its public IP, after the FDB entry
// and before the neighbour that releases the queued packet through VXLAN;
// a peer elsewhere gets none; the route follows the lease: it goes with
// it, follows a new public IP, and stays when the peer looks idle (direct
// traffic leaves the FDB entry unused).
func TestDirectRouting(t *testing.T) {
	far := farLease
	far.PublicIP = netip.MustParseAddr("203.0.113.3") // not on the segment
	r, _, k := newDirectResponder(peerLease, far)
	mustAnswer(t, r, "10.5.2.7")
	ops := k.takeOps()
	if len(ops) != 3 || !strings.HasPrefix(ops[0], "set-fdb ") || ops[1] != "set-route "+directTo(peerLease).String() || !strings.HasPrefix(ops[2], "set-neigh 10.5.2.7 ") {
		t.Errorf("first miss towards a peer on the segment: %v, want FDB, direct route, neighbour", ops)
	}
	mustAnswer(t, r, "10.5.2.8")
	if ops := k.takeOps(); len(ops) != 1 {
		t.Errorf("second miss: %v, want the neighbour alone", ops)
	}
	mustAnswer(t, r, "10.5.3.4")
	for _, op := range k.takeOps() {
		if strings.HasPrefix(op, "set-route") {
			t.Errorf("a peer off the segment got %s", op)
		}
	}

	// Idle in the FDB's eyes: the VXLAN entries go, the direct route stays.
	k.setUnused(peerLease.VtepMAC, time.Hour)
	if _, err := r.ExpireIdle(time.Minute); err != nil {
		t.Fatal(err)
	}
	if !k.routes[directTo(peerLease)] {
		t.Error("the direct route went with the idle VXLAN entries")
	}

	moved := peerLease
	moved.PublicIP = netip.MustParseAddr("192.0.2.99")
	r.ApplyChange(store.Change{Old: &peerLease, New: &moved})
	if k.routes[directTo(peerLease)] || !k.routes[directTo(moved)] {
		t.Errorf("after a new public IP the routes are %v, want the one via %s", k.routes, moved.PublicIP)
	}
	r.ApplyChange(store.Change{Old: &moved})
	if k.routes[directTo(moved)] {
		t.Error("the direct route stayed after its lease went")
	}
}

// TestDirectRoutingReconcile: at start, a direct route for a lease its peer
// is still reached by is kept (flanneld's DirectRouting leaves the same
// one), others are removed.
func TestDirectRoutingReconcile(t *testing.T) {
	r, _, k := newDirectResponder(peerLease)
	k.routes[directTo(peerLease)] = true
	stale := fabric.Route{Dst: netip.MustParsePrefix("10.5.77.0/24"), Via: netip.MustParseAddr("192.0.2.77"), Direct: true}
	k.routes[stale] = true
	wrongVia := fabric.Route{Dst: farLease.Subnet, Via: netip.MustParseAddr("192.0.2.200"), Direct: true}
	k.routes[wrongVia] = true
	if _, err := r.Reconcile(); err != nil {
		t.Fatal(err)
	}
	if !k.routes[directTo(peerLease)] || k.routes[stale] || k.routes[wrongVia] {
		t.Errorf("routes after Reconcile: %v", k.routes)
	}
	// Known after Reconcile: the next miss towards the peer writes no route.
	mustAnswer(t, r, "10.5.2.9")
	for _, op := range k.takeOps() {
		if strings.HasPrefix(op, "set-route") {
			t.Errorf("the kept direct route was written again: %s", op)
		}
	}
}

// TestDirectRoutingRestore: the underlay interface went down and up, and
// the kernel dropped the direct routes on it; RestoreRoutes puts back the
// ones the responder installed (an answer never writes a route it
// believes installed again), and only those.
func TestDirectRoutingRestore(t *testing.T) {
	r, _, k := newDirectResponder(peerLease)
	mustAnswer(t, r, "10.5.2.7")
	k.takeOps()
	delete(k.routes, directTo(peerLease))
	if err := r.RestoreRoutes(); err != nil {
		t.Fatal(err)
	}
	if ops := k.takeOps(); len(ops) != 1 || ops[0] != "set-route "+directTo(peerLease).String() {
		t.Errorf("restoring after the underlay's flap: %v, want the direct route alone", ops)
	}
	if err := r.RestoreRoutes(); err != nil {
		t.Fatal(err)
	}
	if ops := k.takeOps(); len(ops) != 0 {
		t.Errorf("restoring with every route in place wrote %v", ops)
	}
}
