package netns_test

import (
	"fmt"
	"math"
	"net/netip"
	"testing"
	"time"

	"github.com/vtepd/vtepd/subnetfile"
	"github.com/vtepd/vtepd/test/netns"
)

// flowInterval is the migration flows' request period.
const flowInterval = 10 * time.Millisecond

// TestMigrateWithOptions (issue 17 item 5): an overlay whose config has
// "MTU":1400 and "DirectRouting":true; a host set up as flanneld's vxlan
// backend sets one up with those options switches to vtepd and back, with
// a vtepd host on its subnet (reached directly) and one behind the
// underlay's router (reached through VXLAN) sending to its container all
// along. The subnet, FLANNEL_MTU and so the container's address never
// change, and first packets to fresh addresses cross both ways under each. Each switch costs at most what it must:
//   - the direct flow loses nothing: its path (a route via the peer on
//     eth0 at each end) never touches the VXLAN device, and flanneld and
//     vtepd agree on that route, so neither rewrites it;
//   - the VXLAN flow loses at most the requests sent while the host had
//     no working device: to vtepd, from its deleting flanneld's device
//     (which has no miss flags) until it is ready (its log dates both);
//     back to flanneld, from flanneld's deleting vtepd's device (which has
//     them) until the far host has re-pointed its entries at the new
//     device's MAC (its log dates it) and the flanneld-style host has its
//     entries; plus two, one in flight at each end of the window.
func TestMigrateWithOptions(t *testing.T) {
	t.Parallel()
	o, f, near, far := newMixedOverlay(t, "vtmig", 3)
	sNear := mustSubnet(t, near)
	flannelEnv := mustEnv(t, f.Host)
	if flannelEnv.MTU != 1350 || flannelEnv.Subnet.Masked() != f.Subnet {
		t.Fatalf("the flannel host's subnet file: %+v", flannelEnv)
	}
	// Where each of the container's addresses is first pinged from.
	fresh := 0
	firstPings := func(when string) {
		t.Helper()
		type ping struct {
			from *netns.Host
			to   netip.Addr
		}
		round := fresh / 2
		for _, p := range []ping{{near, f.Container.Extra[fresh]}, {far, f.Container.Extra[fresh+1]},
			{f.Host, near.Container.Extra[round]}, {f.Host, far.Container.Extra[round]}} {
			if ok, _, err := p.from.Container.Echo(p.to, time.Second); err != nil || !ok {
				t.Errorf("%s: first ping %s -> %s lost: %v", when, p.from.Name, p.to, err)
			}
		}
		fresh += 2
	}
	firstPings("flanneld")
	// The same subnet file (FLANNEL_SUBNET is dockerd's --bip: the same
	// one keeps every container's address), the same device MTU.
	same := func(when string) {
		t.Helper()
		env := mustEnv(t, f.Host)
		if env.Subnet != flannelEnv.Subnet || env.Network != flannelEnv.Network || env.MTU != flannelEnv.MTU {
			t.Errorf("%s: subnet file %v %v MTU %d, flanneld's was %v %v MTU %d", when, env.Network, env.Subnet, env.MTU,
				flannelEnv.Network, flannelEnv.Subnet, flannelEnv.MTU)
		}
		if got := vxlanDevice(t, f.Host).MTU; got != 1350 {
			t.Errorf("%s: %s's MTU is %d, want 1350", when, device, got)
		}
		// The direct route at both ends, as it was.
		waitRoutes(t, f.Host, sNear, directRoute(sNear, near.IP))
		waitRoutes(t, near, f.Subnet, directRoute(f.Subnet, f.IP))
	}
	same("flanneld")

	type flows struct{ direct, vxlan *netns.Flow }
	start := func() flows {
		return flows{startFlow(t, near, f.Container.Addr), startFlow(t, far, f.Container.Addr)}
	}
	stop := func(fl flows, when string, window time.Duration) {
		t.Helper()
		d := stopFlowAfter(t, fl.direct, 50, 10*time.Second)
		v := stopFlowAfter(t, fl.vxlan, 50, 10*time.Second)
		bound := int(math.Ceil(float64(window)/float64(flowInterval))) + 2
		t.Logf("%s: direct flow lost %d of %d, VXLAN flow %d of %d (window %v: bound %d)", when, len(d.Lost), d.Sent, len(v.Lost), v.Sent,
			window.Round(time.Millisecond), bound)
		if len(d.Lost) > 0 {
			t.Errorf("%s: the direct flow lost %v of %d: its path never touches the VXLAN device", when, d.Lost, d.Sent)
		}
		if len(v.Lost) > bound {
			t.Errorf("%s: the VXLAN flow lost %d of %d (from %v), more than the %d sent while the host had no working device (%v)",
				when, len(v.Lost), v.Sent, v.Lost[:min(len(v.Lost), 20)], bound, window.Round(time.Millisecond))
		}
	}

	// flanneld -> vtepd: the device is recreated with the lease's MAC.
	fl := start()
	macBefore := leaseOf(t, o, f.Subnet).VtepMAC
	if _, err := f.StartVtepd(); err != nil {
		t.Fatal(err)
	}
	warns := f.Vtepd.Entries("existing device is incompatible; recreating it")
	ready := f.Vtepd.Entries("vtepd ready")
	if len(warns) != 1 || len(ready) != 1 {
		t.Fatalf("vtepd on the flannel host: %d device recreations, %d readies; want 1 and 1", len(warns), len(ready))
	}
	stop(fl, "flanneld -> vtepd", logTime(t, ready[0]).Sub(logTime(t, warns[0])))
	if got := leaseOf(t, o, f.Subnet).VtepMAC; got != macBefore {
		t.Errorf("vtepd changed the lease's MAC from %s to %s", macBefore, got)
	}
	// Reconciled: the overlay route it has just made, and flanneld's
	// direct route to the near host, kept; nothing else is left (the
	// device went with flanneld's entries on it).
	if rec := f.Vtepd.Entries("device entries reconciled"); len(rec) != 1 {
		t.Errorf("%d reconciliations logged, want 1", len(rec))
	} else if kept, removed := logInt(t, rec[0], "kept"), logInt(t, rec[0], "removed"); kept != 2 || removed != 0 {
		t.Errorf("vtepd kept %d entries and removed %d, want 2 (its overlay route, flanneld's direct route to %s) and 0", kept, removed, near.Name)
	}
	same("vtepd")
	firstPings("vtepd")

	// vtepd -> flanneld: vtepd stops (leaving everything), flanneld starts
	// again: its own device (vtepd's has miss flags) with a new MAC,
	// published, and its entries.
	fl = start()
	if err := f.Vtepd.Stop(5 * time.Second); err != nil {
		t.Fatal(err)
	}
	repointed := len(far.Vtepd.Entries("lease re-pointed; kernel entries updated"))
	begin := time.Now()
	if n, err := f.Restart(ctxFor(t, 10*time.Second)); err != nil || n != 2 {
		t.Fatalf("flanneld restarted: entries for %d leases (%v), want 2", n, err)
	}
	synced := time.Now()
	if got := leaseOf(t, o, f.Subnet).VtepMAC; got == macBefore || got.String() != f.MAC.String() {
		t.Errorf("flanneld's lease publishes %s (vtepd's was %s), want its new device's %s", got, macBefore, f.MAC)
	}
	var at time.Time
	err := netns.Poll(5*time.Second, func() error {
		for _, e := range far.Vtepd.Entries("lease re-pointed; kernel entries updated")[repointed:] {
			if e.Str("lease") == f.Subnet.String() {
				at = logTime(t, e)
				return nil
			}
		}
		return fmt.Errorf("not yet")
	})
	if err != nil {
		t.Fatalf("the far host did not re-point its entries at the flannel host's new MAC: %v", err)
	}
	end := at
	if synced.After(end) {
		end = synced
	}
	stop(fl, "vtepd -> flanneld", end.Sub(begin))
	if vx := vxlanDevice(t, f.Host); vx.L2miss || vx.L3miss || vx.Proxy {
		t.Errorf("flanneld's device has l2miss %v l3miss %v proxy %v, want none", vx.L2miss, vx.L3miss, vx.Proxy)
	}
	same("flanneld again")
	firstPings("flanneld again")
}

// mustEnv reads h's subnet file.
func mustEnv(t *testing.T, h *netns.Host) subnetfile.Env {
	t.Helper()
	env, err := h.Subnet()
	if err != nil {
		t.Fatal(err)
	}
	return env
}
