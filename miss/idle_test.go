package miss

import (
	"net/netip"
	"testing"
	"time"

	"github.com/vtepd/vtepd/fabric"
	"github.com/vtepd/vtepd/store"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// setUnused makes the kernel say that nothing was sent to mac for d.
func (k *stateKernel) setUnused(mac store.MAC, d time.Duration) {
	for key, f := range k.fdb {
		if store.MAC(f.MAC) == mac {
			f.Unused = d
			k.fdb[key] = f
		}
	}
}

func neighState(k *stateKernel, ip string) int {
	return k.neigh[netip.MustParseAddr(ip)].State
}

func TestAnswersArePermanentUpToTheLimit(t *testing.T) {
	cfg := testConfig
	cfg.NeighbourLimit = 2
	fl := &fakeLeases{leases: []store.Lease{ownLease, peerLease}}
	k := newStateKernel()
	r := NewResponder(cfg, fl, k, zap.NewNop())
	for _, ip := range []string{"10.5.2.7", "10.5.2.8", "10.5.2.9"} {
		mustAnswer(t, r, ip)
	}
	for ip, want := range map[string]int{"10.5.2.7": unix.NUD_PERMANENT, "10.5.2.8": unix.NUD_PERMANENT, "10.5.2.9": unix.NUD_REACHABLE} {
		if got := neighState(k, ip); got != want {
			t.Errorf("%s answered %s, want %s", ip, StateString(uint16(got)), StateString(uint16(want)))
		}
	}
	if got := r.Permanent(); got != 2 {
		t.Errorf("Permanent() = %d, want 2", got)
	}
	// An entry the kernel lost is no longer counted once recounted, and
	// the next answer is PERMANENT again.
	delete(k.neigh, netip.MustParseAddr("10.5.2.7"))
	if _, err := r.ExpireIdle(time.Hour); err != nil {
		t.Fatal(err)
	}
	if got := r.Permanent(); got != 1 {
		t.Errorf("Permanent() = %d after recount, want 1", got)
	}
	mustAnswer(t, r, "10.5.2.10")
	if got := neighState(k, "10.5.2.10"); got != unix.NUD_PERMANENT {
		t.Errorf("10.5.2.10 answered %s below the limit, want PERMANENT", StateString(uint16(got)))
	}
}

func TestExpireIdleForgetsIdlePeers(t *testing.T) {
	r, _, k := newStateResponder(peerLease, farLease)
	mustAnswer(t, r, "10.5.2.7")
	mustAnswer(t, r, "10.5.2.8")
	mustAnswer(t, r, "10.5.3.4")
	// A foreign FDB entry, idle too: not vtepd's, not touched.
	stranger := store.MAC{0x02, 0x55, 0, 0, 0, 9}
	k.plantFDB(stranger, "203.0.113.77", unix.NUD_PERMANENT)
	k.setUnused(stranger, time.Hour)
	k.setUnused(peerLease.VtepMAC, 61*time.Second) // idle
	k.setUnused(farLease.VtepMAC, 59*time.Second)  // still in use
	k.takeOps()

	res, err := r.ExpireIdle(time.Minute)
	if err != nil {
		t.Fatal(err)
	}
	if want := (Expired{Peers: 1, Entries: 3}); res != want {
		t.Errorf("ExpireIdle = %+v, want %+v", res, want)
	}
	expectState(t, k,
		"fdb "+farLease.VtepMAC.String()+" "+farLease.PublicIP.String(),
		"fdb "+stranger.String()+" 203.0.113.77",
		"neigh 10.5.3.4 "+farLease.VtepMAC.String())
	if got := r.Permanent(); got != 1 {
		t.Errorf("Permanent() = %d, want 1", got)
	}
	// Neighbours went before their FDB entry: a packet through a
	// neighbour whose FDB entry is gone would be dropped, not queued.
	ops := k.takeOps()
	if len(ops) == 0 || ops[len(ops)-1] != "del-fdb "+peerLease.VtepMAC.String()+" "+peerLease.PublicIP.String() {
		t.Errorf("ops %v, want the FDB entry deleted last", ops)
	}
	// The idle peer is answered afresh, FDB entry first.
	mustAnswer(t, r, "10.5.2.7")
	if ops := k.takeOps(); len(ops) != 2 || ops[0] != "set-fdb "+peerLease.VtepMAC.String()+" "+peerLease.PublicIP.String() {
		t.Errorf("ops after expiry %v, want the FDB entry, then the neighbour", ops)
	}
}

func TestExpireIdleHostMode(t *testing.T) {
	fl := &fakeLeases{leases: []store.Lease{ownLease, peerLease}}
	k := newStateKernel()
	cfg := testConfig
	cfg.Mode, cfg.Gateway = AnswerHost, ownLease.Gateway()
	r := NewResponder(cfg, fl, k, zap.NewNop())
	mustAnswer(t, r, "10.5.2.7")
	k.setUnused(peerLease.VtepMAC, time.Hour)
	if _, err := r.ExpireIdle(time.Minute); err != nil {
		t.Fatal(err)
	}
	expectState(t, k) // neighbours, host route and FDB entry all gone
	if _, ok := k.routes[fabric.Route{Dst: peerLease.Subnet, Via: peerLease.Gateway()}]; ok {
		t.Error("the idle peer's host route stayed")
	}
	mustAnswer(t, r, "10.5.2.9")
	if !k.routes[fabric.Route{Dst: peerLease.Subnet, Via: peerLease.Gateway()}] {
		t.Error("the host route was not installed again on the next miss")
	}
}

func TestRepointKeepsPermanence(t *testing.T) {
	r, _, k := newStateResponder(peerLease)
	mustAnswer(t, r, "10.5.2.7")
	k.plantNeigh("10.5.2.8", peerLease.VtepMAC, unix.NUD_REACHABLE) // an older vtepd's
	rebuilt := peerLease
	rebuilt.VtepMAC = store.MAC{0x02, 0x77, 0, 0, 0, 1}
	r.ApplyChange(store.Change{Old: &peerLease, New: &rebuilt})
	if got := neighState(k, "10.5.2.7"); got != unix.NUD_PERMANENT {
		t.Errorf("re-pointed permanent entry is %s", StateString(uint16(got)))
	}
	if got := neighState(k, "10.5.2.8"); got != unix.NUD_REACHABLE {
		t.Errorf("re-pointed reachable entry is %s", StateString(uint16(got)))
	}
	r.ApplyChange(store.Change{Old: &rebuilt})
	if got := r.Permanent(); got != 0 {
		t.Errorf("Permanent() = %d once the lease went, want 0", got)
	}
}
