package miss

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"slices"
	"strings"
	"testing"

	"github.com/vtepd/vtepd/fabric"
	"github.com/vtepd/vtepd/store"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// stateKernel is a Kernel that keeps its entries, like the device does, and
// logs every write in order.
type stateKernel struct {
	neigh  map[netip.Addr]fabric.Neighbour
	fdb    map[string]fabric.FDBEntry // by "mac dst"
	routes map[fabric.Route]bool
	ops    []string
	// batchErr, if set, is what SetNeighs meets: a batch that could not be
	// sent at all.
	batchErr error
}

func newStateKernel() *stateKernel {
	return &stateKernel{neigh: map[netip.Addr]fabric.Neighbour{}, fdb: map[string]fabric.FDBEntry{}, routes: map[fabric.Route]bool{}}
}

func (k *stateKernel) SetRoute(r fabric.Route, src netip.Addr) error {
	// Replace, as RouteReplace does: one route per destination.
	for have := range k.routes {
		if have.Dst == r.Dst {
			delete(k.routes, have)
		}
	}
	k.routes[r] = true
	k.ops = append(k.ops, "set-route "+r.String())
	return nil
}

func (k *stateKernel) DelRoute(r fabric.Route) error {
	delete(k.routes, r)
	k.ops = append(k.ops, "del-route "+r.String())
	return nil
}

func (k *stateKernel) Routes() ([]fabric.Route, error) {
	var out []fabric.Route
	for r := range k.routes {
		out = append(out, r)
	}
	return out, nil
}

func (k *stateKernel) SetFDB(m [6]byte, dst netip.Addr) error {
	mac := net.HardwareAddr(append([]byte(nil), m[:]...))
	// NLM_F_REPLACE on a VXLAN FDB entry replaces its destination.
	for key, f := range k.fdb {
		if f.MAC.String() == mac.String() {
			delete(k.fdb, key)
		}
	}
	k.fdb[mac.String()+" "+dst.String()] = fabric.FDBEntry{MAC: mac, Dst: dst, State: unix.NUD_PERMANENT}
	k.ops = append(k.ops, "set-fdb "+mac.String()+" "+dst.String())
	return nil
}

func (k *stateKernel) DelFDB(mac net.HardwareAddr, dst netip.Addr) error {
	delete(k.fdb, mac.String()+" "+dst.String())
	k.ops = append(k.ops, "del-fdb "+mac.String()+" "+dst.String())
	return nil
}

func (k *stateKernel) SetNeigh(ip netip.Addr, m [6]byte, permanent bool) error {
	mac := net.HardwareAddr(append([]byte(nil), m[:]...))
	state := unix.NUD_REACHABLE
	if permanent {
		state = unix.NUD_PERMANENT
	}
	k.neigh[ip] = fabric.Neighbour{IP: ip, MAC: mac, State: state}
	k.ops = append(k.ops, "set-neigh "+ip.String()+" "+mac.String())
	return nil
}

func (k *stateKernel) SetNeighs(writes []fabric.NeighWrite) (int, error) {
	if k.batchErr != nil && len(writes) > 0 {
		return 0, k.batchErr // one error for the whole batch, as fabric's
	}
	for _, w := range writes {
		k.SetNeigh(w.IP, w.MAC, w.Permanent)
	}
	return len(writes), nil
}

func (k *stateKernel) DelNeigh(ip netip.Addr) error {
	delete(k.neigh, ip)
	k.ops = append(k.ops, "del-neigh "+ip.String())
	return nil
}

func (k *stateKernel) Neighbours() ([]fabric.Neighbour, error) {
	var out []fabric.Neighbour
	for _, n := range k.neigh {
		out = append(out, n)
	}
	return out, nil
}

func (k *stateKernel) FDB() ([]fabric.FDBEntry, error) {
	var out []fabric.FDBEntry
	for _, f := range k.fdb {
		out = append(out, f)
	}
	return out, nil
}

// plant puts entries in the kernel behind the responder's back.
func (k *stateKernel) plantNeigh(ip string, mac store.MAC, state int) {
	a := netip.MustParseAddr(ip)
	var hw net.HardwareAddr
	if mac != (store.MAC{}) {
		hw = mac.HardwareAddr()
	}
	k.neigh[a] = fabric.Neighbour{IP: a, MAC: hw, State: state}
}

func (k *stateKernel) plantFDB(mac store.MAC, dst string, state int) {
	d := netip.MustParseAddr(dst)
	k.fdb[mac.String()+" "+dst] = fabric.FDBEntry{MAC: mac.HardwareAddr(), Dst: d, State: state}
}

// state renders the kernel's entries, sorted.
func (k *stateKernel) state() []string {
	var out []string
	for _, n := range k.neigh {
		out = append(out, fmt.Sprintf("neigh %s %s", n.IP, n.MAC))
	}
	for _, f := range k.fdb {
		out = append(out, fmt.Sprintf("fdb %s %s", f.MAC, f.Dst))
	}
	for r := range k.routes {
		out = append(out, "route "+r.String())
	}
	slices.Sort(out)
	return out
}

func (k *stateKernel) takeOps() []string {
	ops := k.ops
	k.ops = nil
	return ops
}

func expectState(t *testing.T, k *stateKernel, want ...string) {
	t.Helper()
	slices.Sort(want)
	if got := k.state(); !slices.Equal(got, want) {
		t.Errorf("kernel holds\n  %s\nwant\n  %s", strings.Join(got, "\n  "), strings.Join(want, "\n  "))
	}
}

func newStateResponder(leases ...store.Lease) (*Responder, *fakeLeases, *stateKernel) {
	fl := &fakeLeases{leases: append([]store.Lease{ownLease}, leases...)}
	k := newStateKernel()
	r := NewResponder(testConfig, fl, k, zap.NewNop())
	return r, fl, k
}

// remove drops the lease stored under key.
func (f *fakeLeases) remove(key string) {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.leases = slices.DeleteFunc(f.leases, func(l store.Lease) bool { return l.Key == key })
}

// mustAnswer drives an L3 miss for ip through the responder.
func mustAnswer(t *testing.T, r *Responder, ip string) {
	t.Helper()
	res := r.Answer(l3Miss(ip))
	if res.Outcome != Answered {
		t.Fatalf("miss for %s: %v (%v)", ip, res.Outcome, res.Err)
	}
}

func TestApplyChangeRemovedLease(t *testing.T) {
	r, fl, k := newStateResponder(peerLease, farLease)
	mustAnswer(t, r, "10.5.2.7")
	mustAnswer(t, r, "10.5.2.8")
	mustAnswer(t, r, "10.5.3.3")
	k.takeOps()

	fl.remove(peerLease.Key)
	r.ApplyChange(store.Change{Old: &peerLease})
	expectState(t, k,
		"neigh 10.5.3.3 "+farLease.VtepMAC.String(),
		"fdb "+farLease.VtepMAC.String()+" "+farLease.PublicIP.String())
	ops := k.takeOps()
	// Neighbours go before the FDB entry they use.
	if len(ops) != 3 || !strings.HasPrefix(ops[0], "del-neigh") || !strings.HasPrefix(ops[1], "del-neigh") || !strings.HasPrefix(ops[2], "del-fdb") {
		t.Errorf("ops %v, want two neighbour deletes, then the FDB delete", ops)
	}

	// Back with the same VTEP: the FDB entry is written again, not assumed.
	fl.put(peerLease)
	r.ApplyChange(store.Change{New: &peerLease})
	mustAnswer(t, r, "10.5.2.7")
	if ops := k.takeOps(); len(ops) != 2 || !strings.HasPrefix(ops[0], "set-fdb") {
		t.Errorf("after the lease came back: ops %v, want the FDB entry first, then the neighbour", ops)
	}
}

func TestApplyChangeRebuiltHost(t *testing.T) {
	r, fl, k := newStateResponder(peerLease)
	mustAnswer(t, r, "10.5.2.7")
	mustAnswer(t, r, "10.5.2.8")
	k.takeOps()

	rebuilt := peerLease
	rebuilt.VtepMAC = store.MAC{0x02, 0, 0, 0, 0, 0x77}
	rebuilt.PublicIP = netip.MustParseAddr("203.0.113.77")
	rebuilt.ModRevision++
	fl.put(rebuilt)
	r.ApplyChange(store.Change{Old: &peerLease, New: &rebuilt})
	expectState(t, k,
		"neigh 10.5.2.7 "+rebuilt.VtepMAC.String(),
		"neigh 10.5.2.8 "+rebuilt.VtepMAC.String(),
		"fdb "+rebuilt.VtepMAC.String()+" "+rebuilt.PublicIP.String())
	if ops := k.takeOps(); len(ops) == 0 || ops[0] != "set-fdb "+rebuilt.VtepMAC.String()+" 203.0.113.77" {
		t.Errorf("ops %v: the new FDB entry must come first", ops)
	}

	// Same MAC, new public IP: only the FDB entry moves.
	moved := rebuilt
	moved.PublicIP = netip.MustParseAddr("203.0.113.78")
	fl.put(moved)
	r.ApplyChange(store.Change{Old: &rebuilt, New: &moved})
	expectState(t, k,
		"neigh 10.5.2.7 "+moved.VtepMAC.String(),
		"neigh 10.5.2.8 "+moved.VtepMAC.String(),
		"fdb "+moved.VtepMAC.String()+" 203.0.113.78")
	for _, op := range k.takeOps() {
		if strings.HasPrefix(op, "set-neigh") || strings.HasPrefix(op, "del-neigh") {
			t.Errorf("a public IP change rewrote a neighbour: %s", op)
		}
	}
}

func TestApplyChangeNoOps(t *testing.T) {
	r, _, k := newStateResponder(peerLease)
	mustAnswer(t, r, "10.5.2.7")
	k.takeOps()
	renewed := peerLease
	renewed.ModRevision += 10
	r.ApplyChange(store.Change{Old: &peerLease, New: &renewed}) // a re-put by flanneld
	r.ApplyChange(store.Change{New: &farLease})                 // a new lease
	own := ownLease
	r.ApplyChange(store.Change{Old: &own}) // our own key deleted: the keeper's business
	if ops := k.takeOps(); len(ops) != 0 {
		t.Errorf("ops %v, want none", ops)
	}
}

func TestReconcile(t *testing.T) {
	r, _, k := newStateResponder(peerLease, farLease)
	peerMAC, farMAC := peerLease.VtepMAC, farLease.VtepMAC
	bogusMAC := store.MAC{0x02, 0xde, 0xad, 0, 0, 1}
	// Right: kept untouched.
	k.plantFDB(peerMAC, peerLease.PublicIP.String(), unix.NUD_PERMANENT)
	k.plantNeigh("10.5.2.7", peerMAC, unix.NUD_PERMANENT)
	// Right place but ageing (flanneld's FDB entry, an older vtepd's
	// neighbour, which would fail while no vtepd answers its PROBE): made
	// PERMANENT in place.
	k.plantFDB(farMAC, farLease.PublicIP.String(), unix.NUD_REACHABLE)
	k.plantNeigh("10.5.2.8", peerMAC, unix.NUD_STALE)
	// Wrong VTEP for a known lease: re-pointed.
	k.plantNeigh("10.5.3.4", bogusMAC, unix.NUD_REACHABLE)
	// No lease behind them: deleted.
	k.plantFDB(bogusMAC, "203.0.113.250", unix.NUD_PERMANENT)
	k.plantNeigh("10.5.200.1", bogusMAC, unix.NUD_REACHABLE)
	k.plantNeigh("10.5.1.9", peerMAC, unix.NUD_REACHABLE) // in our own subnet
	// Missed while vtepd was away: answered now.
	k.plantNeigh("10.5.2.9", store.MAC{}, unix.NUD_INCOMPLETE)
	// The kernel's own: left alone.
	k.plantNeigh("10.5.200.2", store.MAC{}, unix.NUD_INCOMPLETE)
	k.plantNeigh("10.5.255.255", store.MAC{0xff, 0xff, 0xff, 0xff, 0xff, 0xff}, unix.NUD_NOARP)

	res, err := r.Reconcile()
	if err != nil {
		t.Fatal(err)
	}
	want := Reconciled{Kept: 2, Fixed: 3, Removed: 3, Answered: 1}
	if res != want {
		t.Errorf("Reconcile = %+v, want %+v", res, want)
	}
	expectState(t, k,
		"fdb "+peerMAC.String()+" "+peerLease.PublicIP.String(),
		"fdb "+farMAC.String()+" "+farLease.PublicIP.String(),
		"neigh 10.5.2.7 "+peerMAC.String(),
		"neigh 10.5.2.8 "+peerMAC.String(),
		"neigh 10.5.2.9 "+peerMAC.String(),
		"neigh 10.5.3.4 "+farMAC.String(),
		"neigh 10.5.200.2 ",
		"neigh 10.5.255.255 ff:ff:ff:ff:ff:ff")
	for _, op := range k.takeOps() {
		if strings.Contains(op, "10.5.2.7") || op == "del-fdb "+peerMAC.String()+" "+peerLease.PublicIP.String() {
			t.Errorf("a right entry was touched: %s", op)
		}
	}
	for _, ip := range []string{"10.5.2.7", "10.5.2.8", "10.5.2.9", "10.5.3.4"} {
		if n := k.neigh[netip.MustParseAddr(ip)]; n.State != unix.NUD_PERMANENT {
			t.Errorf("neighbour %s is %s after Reconcile, want PERMANENT", ip, StateString(uint16(n.State)))
		}
	}
	if got := r.Permanent(); got != 4 {
		t.Errorf("Permanent() = %d after Reconcile, want 4", got)
	}
	// The FDB cache knows what is installed: the next miss writes one entry.
	mustAnswer(t, r, "10.5.2.20")
	if ops := k.takeOps(); len(ops) != 1 {
		t.Errorf("ops after reconcile %v, want only the neighbour", ops)
	}
}

func TestSweepAnswersPendingAddresses(t *testing.T) {
	r, _, k := newStateResponder(peerLease, farLease)
	k.plantNeigh("10.5.2.7", store.MAC{}, unix.NUD_INCOMPLETE)   // lost to an overflow
	k.plantNeigh("10.5.3.8", store.MAC{}, unix.NUD_INCOMPLETE)   // another peer
	k.plantNeigh("10.5.200.9", store.MAC{}, unix.NUD_INCOMPLETE) // no lease: left to fail
	k.plantNeigh("10.5.2.10", peerLease.VtepMAC, unix.NUD_STALE) // resolved: not touched
	n, err := r.Sweep()
	if err != nil || n != 2 {
		t.Fatalf("Sweep = %d, %v; want 2 answered", n, err)
	}
	expectState(t, k,
		"fdb "+peerLease.VtepMAC.String()+" "+peerLease.PublicIP.String(),
		"fdb "+farLease.VtepMAC.String()+" "+farLease.PublicIP.String(),
		"neigh 10.5.2.7 "+peerLease.VtepMAC.String(),
		"neigh 10.5.3.8 "+farLease.VtepMAC.String(),
		"neigh 10.5.200.9 ",
		"neigh 10.5.2.10 "+peerLease.VtepMAC.String())
	for _, op := range k.takeOps() {
		if strings.Contains(op, "10.5.2.10") || strings.Contains(op, "10.5.200.9") {
			t.Errorf("Sweep touched %s", op)
		}
	}
}

// A batch the kernel never took is not answered, though it comes back as
// one error: the overflow loop re-sweeps while a sweep answers anything.
func TestSweepCountsOnlyWhatTheKernelTook(t *testing.T) {
	r, _, k := newStateResponder(peerLease)
	for _, a := range []string{"10.5.2.7", "10.5.2.8", "10.5.2.9"} {
		k.plantNeigh(a, store.MAC{}, unix.NUD_INCOMPLETE)
	}
	k.batchErr = errors.New("sendto: no buffer space")
	if n, err := r.Sweep(); n != 0 || err == nil {
		t.Errorf("Sweep with its batch refused = %d, %v; want 0 answered and the error", n, err)
	}
}

// In host mode the first address of a peer is written with its route: a
// sweep that finds it pending writes it once, and counts it.
func TestSweepHostMode(t *testing.T) {
	r, _, k := newHostResponder(peerLease)
	k.plantNeigh(peerLease.Gateway().String(), store.MAC{}, unix.NUD_INCOMPLETE)
	k.plantNeigh("10.5.2.7", store.MAC{}, unix.NUD_INCOMPLETE)
	n, err := r.Sweep()
	if err != nil || n != 2 {
		t.Fatalf("Sweep = %d, %v; want 2 answered", n, err)
	}
	gw := 0
	for _, op := range k.takeOps() {
		if strings.HasPrefix(op, "set-neigh "+peerLease.Gateway().String()+" ") {
			gw++
		}
	}
	if gw != 1 {
		t.Errorf("the first address's neighbour written %d times, want once", gw)
	}
	if !k.routes[fabric.Route{Dst: peerLease.Subnet, Via: peerLease.Gateway()}] {
		t.Errorf("no host route to %s after the sweep", peerLease.Subnet)
	}
}

func newHostResponder(leases ...store.Lease) (*Responder, *fakeLeases, *stateKernel) {
	fl := &fakeLeases{leases: append([]store.Lease{ownLease}, leases...)}
	k := newStateKernel()
	cfg := testConfig
	cfg.Mode, cfg.Gateway = AnswerHost, ownLease.Gateway()
	return NewResponder(cfg, fl, k, zap.NewNop()), fl, k
}

func TestHostModeAnswers(t *testing.T) {
	r, fl, k := newHostResponder(peerLease, farLease)
	peerMAC, farMAC := peerLease.VtepMAC.String(), farLease.VtepMAC.String()
	mustAnswer(t, r, "10.5.2.7")
	want := []string{
		"set-fdb " + peerMAC + " " + peerLease.PublicIP.String(),
		"set-neigh 10.5.2.0 " + peerMAC,
		"set-route 10.5.2.0/24 via 10.5.2.0 onlink",
		"set-neigh 10.5.2.7 " + peerMAC,
	}
	if ops := k.takeOps(); !slices.Equal(ops, want) {
		t.Errorf("first miss for a host: ops\n  %s\nwant\n  %s", strings.Join(ops, "\n  "), strings.Join(want, "\n  "))
	}
	// A packet sent before the route existed misses too: only its own
	// entry is written.
	mustAnswer(t, r, "10.5.2.8")
	if ops := k.takeOps(); !slices.Equal(ops, []string{"set-neigh 10.5.2.8 " + peerMAC}) {
		t.Errorf("second miss for the same host: ops %v", ops)
	}
	// A miss for a host's first address itself writes it once.
	mustAnswer(t, r, "10.5.3.0")
	if ops := k.takeOps(); len(ops) != 3 || ops[2] != "set-route 10.5.3.0/24 via 10.5.3.0 onlink" {
		t.Errorf("miss for a gateway: ops %v", ops)
	}

	// A rebuilt peer: its neighbours, the gateway's included, are
	// re-pointed; the route stays.
	rebuilt := peerLease
	rebuilt.VtepMAC = store.MAC{0x02, 0, 0, 0, 0, 0x77}
	fl.put(rebuilt)
	r.ApplyChange(store.Change{Old: &peerLease, New: &rebuilt})
	expectState(t, k,
		"fdb "+rebuilt.VtepMAC.String()+" "+rebuilt.PublicIP.String(),
		"fdb "+farMAC+" "+farLease.PublicIP.String(),
		"neigh 10.5.2.0 "+rebuilt.VtepMAC.String(),
		"neigh 10.5.2.7 "+rebuilt.VtepMAC.String(),
		"neigh 10.5.2.8 "+rebuilt.VtepMAC.String(),
		"neigh 10.5.3.0 "+farMAC,
		"route 10.5.2.0/24 via 10.5.2.0 onlink",
		"route 10.5.3.0/24 via 10.5.3.0 onlink")

	// Removed: route, neighbours and FDB entry all go.
	fl.remove(rebuilt.Key)
	r.ApplyChange(store.Change{Old: &rebuilt})
	expectState(t, k,
		"fdb "+farMAC+" "+farLease.PublicIP.String(),
		"neigh 10.5.3.0 "+farMAC,
		"route 10.5.3.0/24 via 10.5.3.0 onlink")
}

func TestHostModeReconcileAndRestore(t *testing.T) {
	for _, mode := range []AnswerMode{AnswerAddress, AnswerHost} {
		t.Run(mode.String(), func(t *testing.T) {
			fl := &fakeLeases{leases: []store.Lease{ownLease, peerLease, farLease}}
			k := newStateKernel()
			cfg := testConfig
			cfg.Mode, cfg.Gateway = mode, ownLease.Gateway()
			r := NewResponder(cfg, fl, k, zap.NewNop())
			overlay := fabric.Route{Dst: testConfig.Network}
			peerRoute := fabric.Route{Dst: peerLease.Subnet, Via: peerLease.Gateway()}
			k.routes[overlay] = true
			k.routes[peerRoute] = true // ours from before, or flanneld's
			k.routes[fabric.Route{Dst: netip.MustParsePrefix("10.5.200.0/24"), Via: netip.MustParseAddr("10.5.200.0")}] = true
			k.routes[fabric.Route{Dst: peerLease.Subnet, Via: netip.MustParseAddr("10.5.2.9")}] = true
			if _, err := r.Reconcile(); err != nil {
				t.Fatal(err)
			}
			want := []string{"route " + overlay.String()}
			if mode == AnswerHost {
				want = append(want, "route "+peerRoute.String())
			}
			expectState(t, k, want...)

			if mode == AnswerHost {
				// The device went down and up: the kernel dropped every
				// route; the responder puts its host routes back.
				clear(k.routes)
				if err := r.RestoreRoutes(); err != nil {
					t.Fatal(err)
				}
				expectState(t, k, "route "+peerRoute.String())
			}
		})
	}
}

func TestNewLeaseAsksForASweep(t *testing.T) {
	var sweeps int
	fl := &fakeLeases{leases: []store.Lease{ownLease, peerLease}}
	cfg := testConfig
	cfg.Sweep = func() { sweeps++ }
	r := NewResponder(cfg, fl, newStateKernel(), zap.NewNop())
	r.ApplyChange(store.Change{New: &farLease})
	if sweeps != 0 {
		t.Errorf("swept while the table was still loading")
	}
	if _, err := r.Reconcile(); err != nil {
		t.Fatal(err)
	}
	r.ApplyChange(store.Change{New: &farLease})
	own := ownLease
	r.ApplyChange(store.Change{New: &own})
	renewed := farLease
	renewed.ModRevision++
	r.ApplyChange(store.Change{Old: &farLease, New: &renewed})
	if sweeps != 1 {
		t.Errorf("%d sweeps, want 1: for the new lease only", sweeps)
	}
}

func (k *stateKernel) SetFDBAndNeigh(mac [6]byte, dst, ip netip.Addr, permanent bool) (error, error) {
	return k.SetFDB(mac, dst), k.SetNeigh(ip, mac, permanent)
}
