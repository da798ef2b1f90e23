package miss

import (
	"errors"
	"fmt"
	"io"
	"net"
	"net/netip"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/vtepd/vtepd/fabric"
	"github.com/vtepd/vtepd/store"
	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
	"go.uber.org/zap/zaptest"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"
)

// fakeLeases is a Leases over a list of leases that a test can change.
type fakeLeases struct {
	mu     sync.Mutex
	leases []store.Lease
}

func (f *fakeLeases) LookupIP(ip netip.Addr) (store.Lease, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, l := range f.leases {
		if l.Subnet.Contains(ip) || l.IPv6Subnet.Contains(ip) {
			return l, true
		}
	}
	return store.Lease{}, false
}

func (f *fakeLeases) LookupMAC(mac store.MAC) (store.Lease, bool) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for _, l := range f.leases {
		if l.VtepMAC == mac || l.VtepMACv6 == mac && mac != (store.MAC{}) {
			return l, true
		}
	}
	return store.Lease{}, false
}

// put adds l, or replaces the lease of the same subnet.
func (f *fakeLeases) put(l store.Lease) {
	f.mu.Lock()
	defer f.mu.Unlock()
	for i := range f.leases {
		if f.leases[i].Subnet == l.Subnet {
			f.leases[i] = l
			return
		}
	}
	f.leases = append(f.leases, l)
}

// write is one call to the fake kernel.
type write struct {
	op  string // "fdb" or "neigh"
	mac string
	ip  netip.Addr // the FDB's destination, or the neighbour's address
	// aging marks a neighbour written REACHABLE rather than PERMANENT.
	aging bool
}

func (w write) String() string { return fmt.Sprintf("%s %s %s", w.op, w.mac, w.ip) }

func fdbWrite(mac store.MAC, dst string) write {
	return write{op: "fdb", mac: mac.String(), ip: netip.MustParseAddr(dst)}
}

func neighWrite(ip string, mac store.MAC) write {
	return write{op: "neigh", mac: mac.String(), ip: netip.MustParseAddr(ip)}
}

// fakeKernel records writes; fdbErr and neighErr make them fail.
type fakeKernel struct {
	mu       sync.Mutex
	writes   []write
	fdbErr   error
	neighErr error
	delay    time.Duration
}

func (k *fakeKernel) SetFDB(m [6]byte, dst netip.Addr) error {
	mac := net.HardwareAddr(m[:])
	time.Sleep(k.delay)
	k.mu.Lock()
	defer k.mu.Unlock()
	k.writes = append(k.writes, write{op: "fdb", mac: mac.String(), ip: dst})
	return k.fdbErr
}

func (k *fakeKernel) SetNeigh(ip netip.Addr, m [6]byte, permanent bool) error {
	mac := net.HardwareAddr(m[:])
	time.Sleep(k.delay)
	k.mu.Lock()
	defer k.mu.Unlock()
	k.writes = append(k.writes, write{op: "neigh", mac: mac.String(), ip: ip, aging: !permanent})
	return k.neighErr
}

func (k *fakeKernel) DelFDB(mac net.HardwareAddr, dst netip.Addr) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.writes = append(k.writes, write{op: "del-fdb", mac: mac.String(), ip: dst})
	return nil
}

func (k *fakeKernel) SetNeighs(writes []fabric.NeighWrite) (int, error) {
	var errs []error
	for _, w := range writes {
		if err := k.SetNeigh(w.IP, w.MAC, w.Permanent); err != nil {
			errs = append(errs, err)
		}
	}
	return len(writes) - len(errs), errors.Join(errs...)
}

func (k *fakeKernel) DelNeigh(ip netip.Addr) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.writes = append(k.writes, write{op: "del-neigh", mac: "", ip: ip})
	return nil
}

func (k *fakeKernel) SetRoute(r fabric.Route, src netip.Addr) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.writes = append(k.writes, write{op: "route", mac: r.Via.String(), ip: r.Dst.Addr()})
	return nil
}

func (k *fakeKernel) DelRoute(r fabric.Route) error {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.writes = append(k.writes, write{op: "del-route", mac: r.Via.String(), ip: r.Dst.Addr()})
	return nil
}

func (k *fakeKernel) Neighbours() ([]fabric.Neighbour, error) { return nil, nil }
func (k *fakeKernel) FDB() ([]fabric.FDBEntry, error)         { return nil, nil }
func (k *fakeKernel) Routes() ([]fabric.Route, error)         { return nil, nil }

// take returns the writes made since the last take.
func (k *fakeKernel) take() []write {
	k.mu.Lock()
	defer k.mu.Unlock()
	w := k.writes
	k.writes = nil
	return w
}

func (k *fakeKernel) fail(fdb, neigh error) {
	k.mu.Lock()
	defer k.mu.Unlock()
	k.fdbErr, k.neighErr = fdb, neigh
}

var (
	ownMAC    = store.MAC{0x02, 0, 0, 0, 0, 0x01}
	otherMAC  = store.MAC{0x02, 0, 0, 0, 0, 0x03}
	ownLease  = store.Lease{Key: "own", Subnet: netip.MustParsePrefix("10.5.1.0/24"), PublicIP: netip.MustParseAddr("192.0.2.1"), VtepMAC: ownMAC, VNI: 1}
	peerLease = store.Lease{Key: "peer", Subnet: netip.MustParsePrefix("10.5.2.0/24"), PublicIP: netip.MustParseAddr("192.0.2.2"), VtepMAC: remoteMAC, VNI: 1}
	farLease  = store.Lease{Key: "far", Subnet: netip.MustParsePrefix("10.5.3.0/24"), PublicIP: netip.MustParseAddr("192.0.2.3"), VtepMAC: otherMAC, VNI: 1}
)

var testConfig = ResponderConfig{
	Ifindex: 7,
	Network: netip.MustParsePrefix("10.5.0.0/16"),
	Own:     ownLease.Subnet,
}

func newTestResponder(t *testing.T) (*Responder, *fakeLeases, *fakeKernel) {
	t.Helper()
	leases := &fakeLeases{leases: []store.Lease{ownLease, peerLease, farLease}}
	kernel := &fakeKernel{}
	return NewResponder(testConfig, leases, kernel, zaptest.NewLogger(t)), leases, kernel
}

func l3Miss(ip string) *Miss {
	return &Miss{Kind: L3, Ifindex: 7, State: unix.NUD_INCOMPLETE, IP: netip.MustParseAddr(ip), Received: time.Now()}
}

func l2Miss(mac store.MAC) *Miss {
	return &Miss{Kind: L2, Ifindex: 7, State: unix.NUD_STALE, MAC: mac, HasMAC: true, Received: time.Now()}
}

// check compares a result and the writes it made with what is wanted.
func check(t *testing.T, k *fakeKernel, res Result, outcome Outcome, writes ...write) {
	t.Helper()
	if res.Outcome != outcome {
		t.Errorf("outcome %v (err %v), want %v", res.Outcome, res.Err, outcome)
	}
	got := k.take()
	if !slices.Equal(got, writes) {
		t.Errorf("kernel writes %v, want %v", got, writes)
	}
	if res.Writes != len(writes) {
		t.Errorf("Result.Writes = %d, want %d", res.Writes, len(writes))
	}
	if outcome != Failed && res.Err != nil {
		t.Errorf("Result.Err = %v", res.Err)
	}
}

func TestAnswerL3WritesFDBThenNeigh(t *testing.T) {
	r, _, k := newTestResponder(t)

	res := r.Answer(l3Miss("10.5.2.5"))
	check(t, k, res, Answered, fdbWrite(remoteMAC, "192.0.2.2"), neighWrite("10.5.2.5", remoteMAC))
	if res.Lease != v4(peerLease) {
		t.Errorf("Result.Lease = %v, want %v", res.Lease, peerLease)
	}

	// Another address behind the same VTEP: its FDB entry is in place.
	res = r.Answer(l3Miss("10.5.2.6"))
	check(t, k, res, Answered, neighWrite("10.5.2.6", remoteMAC))

	// The same address again: the kernel asks, so the entry is gone.
	res = r.Answer(l3Miss("10.5.2.5"))
	check(t, k, res, Answered, neighWrite("10.5.2.5", remoteMAC))

	// Another VTEP needs its own FDB entry.
	res = r.Answer(l3Miss("10.5.3.200"))
	check(t, k, res, Answered, fdbWrite(otherMAC, "192.0.2.3"), neighWrite("10.5.3.200", otherMAC))
}

func TestAnswerL3ProbeLikeIncomplete(t *testing.T) {
	r, _, k := newTestResponder(t)
	// An aged entry re-confirmed: the kernel sends the MAC it has cached,
	// which need not be the lease's current one. The answer is the lease's.
	stale := store.MAC{0x02, 0xde, 0xad, 0, 0, 0x99}
	m := &Miss{Kind: L3, Ifindex: 7, State: unix.NUD_PROBE, IP: netip.MustParseAddr("10.5.2.5"), MAC: stale, HasMAC: true, Received: time.Now()}
	res := r.Answer(m)
	check(t, k, res, Answered, fdbWrite(remoteMAC, "192.0.2.2"), neighWrite("10.5.2.5", remoteMAC))

	// And decoded from the kernel's bytes, through Handle.
	decoded, err := Decode(appProbePROBE)
	if err != nil {
		t.Fatal(err)
	}
	decoded.Received = time.Now()
	r.Handle(&decoded)
	if got, want := k.take(), []write{neighWrite("10.5.2.5", remoteMAC)}; !slices.Equal(got, want) {
		t.Errorf("PROBE via Handle: writes %v, want %v", got, want)
	}
	if n := r.Count(L3, Answered); n != 2 {
		t.Errorf("Count(L3, Answered) = %d, want 2", n)
	}
}

func TestAnswerL3LeaseMoved(t *testing.T) {
	r, leases, k := newTestResponder(t)
	check(t, k, r.Answer(l3Miss("10.5.2.5")), Answered, fdbWrite(remoteMAC, "192.0.2.2"), neighWrite("10.5.2.5", remoteMAC))

	// The host got a new public IP: the cached FDB entry is wrong.
	moved := peerLease
	moved.PublicIP = netip.MustParseAddr("198.51.100.2")
	leases.put(moved)
	res := r.Answer(l3Miss("10.5.2.6"))
	check(t, k, res, Answered, fdbWrite(remoteMAC, "198.51.100.2"), neighWrite("10.5.2.6", remoteMAC))
	if res.Lease != v4(moved) {
		t.Errorf("Result.Lease = %v, want %v", res.Lease, moved)
	}
	check(t, k, r.Answer(l3Miss("10.5.2.7")), Answered, neighWrite("10.5.2.7", remoteMAC))

	// The host recreated its device with a new MAC.
	newMAC := store.MAC{0x02, 0, 0, 0, 0, 0x22}
	moved.VtepMAC = newMAC
	leases.put(moved)
	check(t, k, r.Answer(l3Miss("10.5.2.8")), Answered, fdbWrite(newMAC, "198.51.100.2"), neighWrite("10.5.2.8", newMAC))
}

func TestAnswerL3NotAnswered(t *testing.T) {
	tests := []struct {
		ip   string
		want Outcome
	}{
		{"10.5.1.9", OwnSubnet},
		{"10.5.1.0", OwnSubnet}, // our VXLAN device's own address
		{"10.5.1.255", OwnSubnet},
		{"10.5.9.9", NoLease},
		{"10.6.0.1", OutsideOverlay},
		{"192.168.1.1", OutsideOverlay},
		{"fe80::b8c7:11ff:fe22:3344", OutsideOverlay}, // IPv6 link-local ND
		{"fd00:10::5", OutsideOverlay},
		{"::ffff:10.5.2.5", OutsideOverlay}, // IPv4-mapped: not an IPv4 NDA_DST
	}
	for _, tt := range tests {
		t.Run(tt.ip, func(t *testing.T) {
			r, _, k := newTestResponder(t)
			res := r.Answer(l3Miss(tt.ip))
			check(t, k, res, tt.want)
			if res.Lease != (store.Part{}) {
				t.Errorf("Result.Lease = %v, want none", res.Lease)
			}
			if n := r.Count(L3, tt.want); n != 1 {
				t.Errorf("Count(L3, %v) = %d, want 1", tt.want, n)
			}
		})
	}
}

func TestAnswerL2(t *testing.T) {
	r, _, k := newTestResponder(t)

	res := r.Answer(l2Miss(remoteMAC))
	check(t, k, res, Answered, fdbWrite(remoteMAC, "192.0.2.2"))
	if res.Lease != v4(peerLease) {
		t.Errorf("Result.Lease = %v, want %v", res.Lease, peerLease)
	}
	// The kernel says the entry is missing, whatever the cache says.
	check(t, k, r.Answer(l2Miss(remoteMAC)), Answered, fdbWrite(remoteMAC, "192.0.2.2"))
	// An L2 answer fills the cache an L3 answer uses.
	check(t, k, r.Answer(l3Miss("10.5.2.5")), Answered, neighWrite("10.5.2.5", remoteMAC))
	// And an L3 answer's FDB entry does not stop an L2 answer.
	check(t, k, r.Answer(l3Miss("10.5.3.1")), Answered, fdbWrite(otherMAC, "192.0.2.3"), neighWrite("10.5.3.1", otherMAC))
	check(t, k, r.Answer(l2Miss(otherMAC)), Answered, fdbWrite(otherMAC, "192.0.2.3"))

	if n := r.Count(L2, Answered); n != 3 {
		t.Errorf("Count(L2, Answered) = %d, want 3", n)
	}
	if n := r.Count(L3, Answered); n != 2 {
		t.Errorf("Count(L3, Answered) = %d, want 2", n)
	}
}

func TestAnswerL2NotAnswered(t *testing.T) {
	r, _, k := newTestResponder(t)

	res := r.Answer(l2Miss(ownMAC))
	check(t, k, res, OwnSubnet)
	if res.Lease != v4(ownLease) {
		t.Errorf("Result.Lease = %v, want %v", res.Lease, ownLease)
	}
	check(t, k, r.Answer(l2Miss(store.MAC{0x02, 0xff, 0, 0, 0, 1})), NoLease)
	check(t, k, r.Answer(&Miss{Kind: L2, Ifindex: 7, State: unix.NUD_STALE, Received: time.Now()}), NoLease)

	if n := r.Count(L2, OwnSubnet); n != 1 {
		t.Errorf("Count(L2, OwnSubnet) = %d, want 1", n)
	}
	if n := r.Count(L2, NoLease); n != 2 {
		t.Errorf("Count(L2, NoLease) = %d, want 2", n)
	}
}

func TestAnswerFDBFailure(t *testing.T) {
	r, _, k := newTestResponder(t)
	errFull := errors.New("table full")
	k.fail(errFull, nil)

	// The first answer for a peer sends both writes in one datagram, and
	// the kernel applies the neighbour even though the FDB entry failed
	// (fabric.Entries.SetFDBAndNeigh): the outcome is a failure all the same.
	res := r.Answer(l3Miss("10.5.2.5"))
	check(t, k, res, Failed, fdbWrite(remoteMAC, "192.0.2.2"), neighWrite("10.5.2.5", remoteMAC))
	if !errors.Is(res.Err, errFull) {
		t.Errorf("Result.Err = %v, want %v", res.Err, errFull)
	}
	if res.Lease != v4(peerLease) {
		t.Errorf("Result.Lease = %v, want %v", res.Lease, peerLease)
	}

	// The failed write is not remembered as done: the next miss retries it.
	k.fail(nil, nil)
	check(t, k, r.Answer(l3Miss("10.5.2.5")), Answered, fdbWrite(remoteMAC, "192.0.2.2"), neighWrite("10.5.2.5", remoteMAC))

	if n := r.Count(L3, Failed); n != 1 {
		t.Errorf("Count(L3, Failed) = %d, want 1", n)
	}
	if n := r.Count(L3, Answered); n != 1 {
		t.Errorf("Count(L3, Answered) = %d, want 1", n)
	}
}

func TestAnswerNeighFailure(t *testing.T) {
	r, _, k := newTestResponder(t)
	errNeigh := errors.New("no buffer space")
	k.fail(nil, errNeigh)

	res := r.Answer(l3Miss("10.5.2.5"))
	check(t, k, res, Failed, fdbWrite(remoteMAC, "192.0.2.2"), neighWrite("10.5.2.5", remoteMAC))
	if !errors.Is(res.Err, errNeigh) {
		t.Errorf("Result.Err = %v, want %v", res.Err, errNeigh)
	}
	// The FDB write did succeed; only the neighbour is written again.
	k.fail(nil, nil)
	check(t, k, r.Answer(l3Miss("10.5.2.5")), Answered, neighWrite("10.5.2.5", remoteMAC))
}

func TestAnswerL2FailureForgetsFDB(t *testing.T) {
	r, _, k := newTestResponder(t)
	check(t, k, r.Answer(l3Miss("10.5.2.5")), Answered, fdbWrite(remoteMAC, "192.0.2.2"), neighWrite("10.5.2.5", remoteMAC))

	// The kernel lost the entry and rewriting it failed: the cache must not
	// claim it is there any more.
	errFDB := errors.New("fdb write failed")
	k.fail(errFDB, nil)
	res := r.Answer(l2Miss(remoteMAC))
	check(t, k, res, Failed, fdbWrite(remoteMAC, "192.0.2.2"))
	if !errors.Is(res.Err, errFDB) {
		t.Errorf("Result.Err = %v, want %v", res.Err, errFDB)
	}
	k.fail(nil, nil)
	check(t, k, r.Answer(l3Miss("10.5.2.6")), Answered, fdbWrite(remoteMAC, "192.0.2.2"), neighWrite("10.5.2.6", remoteMAC))
	if n := r.Count(L2, Failed); n != 1 {
		t.Errorf("Count(L2, Failed) = %d, want 1", n)
	}
}

func TestHandleIgnoresOtherDevices(t *testing.T) {
	leases := &fakeLeases{leases: []store.Lease{ownLease, peerLease}}
	k := &fakeKernel{}
	core, logs := observer.New(zapcore.DebugLevel)
	r := NewResponder(testConfig, leases, k, zap.New(core))

	for _, m := range []*Miss{l3Miss("10.5.2.5"), l2Miss(remoteMAC)} {
		m.Ifindex = 8
		r.Handle(m)
	}
	if w := k.take(); len(w) != 0 {
		t.Errorf("writes for another device: %v", w)
	}
	for _, kind := range []Kind{L2, L3} {
		for _, o := range Outcomes() {
			if n := r.Count(kind, o); n != 0 {
				t.Errorf("Count(%v, %v) = %d for another device's misses", kind, o, n)
			}
		}
	}
	if logs.Len() != 0 {
		t.Errorf("logged %d lines for another device's misses", logs.Len())
	}

	// The same misses on our device are answered.
	r.Handle(l3Miss("10.5.2.5"))
	if w := k.take(); len(w) != 2 {
		t.Errorf("writes for our device: %v, want 2", w)
	}
	if n := r.Count(L3, Answered); n != 1 {
		t.Errorf("Count(L3, Answered) = %d, want 1", n)
	}
}

func TestCount(t *testing.T) {
	r, _, _ := newTestResponder(t)
	for _, ip := range []string{"10.5.2.1", "10.5.2.2", "10.5.3.1", "10.5.1.1", "10.5.99.1", "10.99.0.1", "10.99.0.2"} {
		r.Handle(l3Miss(ip))
	}
	r.Handle(l2Miss(remoteMAC))
	r.Handle(l2Miss(ownMAC))
	want := map[Kind]map[Outcome]uint64{
		L3: {Answered: 3, OwnSubnet: 1, NoLease: 1, OutsideOverlay: 2},
		L2: {Answered: 1, OwnSubnet: 1},
	}
	for _, kind := range []Kind{L2, L3} {
		for _, o := range Outcomes() {
			if got := r.Count(kind, o); got != want[kind][o] {
				t.Errorf("Count(%v, %v) = %d, want %d", kind, o, got, want[kind][o])
			}
		}
	}
	// Out of range asks are zero, not a panic.
	for _, c := range []struct {
		k Kind
		o Outcome
	}{{0, Answered}, {3, Answered}, {255, Answered}, {L3, numOutcomes}, {L3, 255}} {
		if got := r.Count(c.k, c.o); got != 0 {
			t.Errorf("Count(%v, %v) = %d, want 0", c.k, c.o, got)
		}
	}
}

func TestOutcomes(t *testing.T) {
	want := []string{"answered", "own_subnet", "no_lease", "outside_overlay", "error"}
	var got []string
	for _, o := range Outcomes() {
		got = append(got, o.String())
	}
	if !slices.Equal(got, want) {
		t.Errorf("Outcomes() = %v, want %v", got, want)
	}
	if s := Outcome(200).String(); s != "Outcome(200)" {
		t.Errorf("Outcome(200).String() = %q", s)
	}
}

func TestResultLatency(t *testing.T) {
	r, _, k := newTestResponder(t)

	// Measured from Received, not from when Answer was called.
	m := l3Miss("10.5.2.5")
	m.Received = time.Now().Add(-50 * time.Millisecond)
	res := r.Answer(m)
	bound := time.Since(m.Received)
	if res.Latency < 50*time.Millisecond || res.Latency > bound {
		t.Errorf("Latency = %v, want between 50ms and %v", res.Latency, bound)
	}

	// And it includes the kernel writes.
	k.delay = 20 * time.Millisecond
	m = l3Miss("10.5.3.1")
	res = r.Answer(m)
	if res.Writes != 2 || res.Latency < 40*time.Millisecond {
		t.Errorf("with two 20ms writes: Writes %d, Latency %v, want 2 and at least 40ms", res.Writes, res.Latency)
	}

	// Not-answered misses have a latency too.
	m = l3Miss("10.99.0.1")
	m.Received = time.Now().Add(-10 * time.Millisecond)
	if res := r.Answer(m); res.Latency < 10*time.Millisecond {
		t.Errorf("OutsideOverlay: Latency = %v, want at least 10ms", res.Latency)
	}
}

func TestHandleLogsMissAtDebug(t *testing.T) {
	leases := &fakeLeases{leases: []store.Lease{ownLease, peerLease}}
	k := &fakeKernel{}
	core, logs := observer.New(zapcore.DebugLevel)
	r := NewResponder(testConfig, leases, k, zap.New(core))

	r.Handle(l3Miss("10.5.2.5"))
	r.Handle(l2Miss(remoteMAC))
	r.Handle(l3Miss("10.99.0.1"))
	k.fail(nil, errors.New("boom")) // the FDB entry is cached by now
	r.Handle(l3Miss("10.5.2.9"))

	entries := logs.TakeAll()
	if len(entries) != 4 {
		t.Fatalf("logged %d lines, want 4: %v", len(entries), entries)
	}
	want := []map[string]any{
		{"kind": "L3", "ip": "10.5.2.5", "state": "INCOMPLETE", "outcome": "answered", "writes": int64(2),
			"lease": "10.5.2.0/24", "vtep": "192.0.2.2", "vtep_mac": remoteMAC.String()},
		{"kind": "L2", "mac": remoteMAC.String(), "state": "STALE", "outcome": "answered", "writes": int64(1)},
		{"kind": "L3", "ip": "10.99.0.1", "state": "INCOMPLETE", "outcome": "outside_overlay", "writes": int64(0)},
		{"kind": "L3", "ip": "10.5.2.9", "state": "INCOMPLETE", "outcome": "error", "error": "boom"},
	}
	for i, e := range entries {
		if e.Message != "miss" || e.Level != zapcore.DebugLevel {
			t.Errorf("line %d: %v %q, want debug \"miss\"", i, e.Level, e.Message)
		}
		ctx := e.ContextMap()
		for key, v := range want[i] {
			if ctx[key] != v {
				t.Errorf("line %d: %s = %#v, want %#v (all: %v)", i, key, ctx[key], v, ctx)
			}
		}
		if _, ok := ctx["latency"]; !ok {
			t.Errorf("line %d: no latency field: %v", i, ctx)
		}
	}
	if _, ok := entries[1].ContextMap()["ip"]; ok {
		t.Errorf("L2 line has an ip field: %v", entries[1].ContextMap())
	}
	if _, ok := entries[0].ContextMap()["mac"]; ok {
		t.Errorf("INCOMPLETE line has a mac field: %v", entries[0].ContextMap())
	}

	// Nothing at info level: a miss storm must not become a log storm.
	core, logs = observer.New(zapcore.InfoLevel)
	r = NewResponder(testConfig, leases, &fakeKernel{}, zap.New(core))
	r.Handle(l3Miss("10.5.2.5"))
	if logs.Len() != 0 {
		t.Errorf("logged at info level: %v", logs.All())
	}
	if n := r.Count(L3, Answered); n != 1 {
		t.Errorf("with logging off: Count(L3, Answered) = %d, want 1", n)
	}
}

func TestAnswerConcurrent(t *testing.T) {
	r, _, k := newTestResponder(t)
	r.log = zap.NewNop()
	const workers, perWorker = 8, 200
	var wg sync.WaitGroup
	for w := range workers {
		wg.Go(func() {
			for i := range perWorker {
				var m *Miss
				switch i % 3 {
				case 0:
					m = l3Miss(fmt.Sprintf("10.5.2.%d", (w*perWorker+i)%250+1))
				case 1:
					m = l3Miss(fmt.Sprintf("10.5.3.%d", (w*perWorker+i)%250+1))
				default:
					m = l3Miss("10.5.1.7")
				}
				r.Handle(m)
			}
		})
	}
	wg.Wait()
	// Serialised through the cache: one FDB write per VTEP, however many
	// misses raced for it.
	fdb := map[string]int{}
	neigh := 0
	for _, w := range k.take() {
		if w.op == "fdb" {
			fdb[w.mac]++
		} else {
			neigh++
		}
	}
	if fdb[remoteMAC.String()] != 1 || fdb[otherMAC.String()] != 1 || len(fdb) != 2 {
		t.Errorf("FDB writes per MAC %v, want one for each of two VTEPs", fdb)
	}
	answered := r.Count(L3, Answered)
	if answered != uint64(neigh) || answered+r.Count(L3, OwnSubnet) != workers*perWorker {
		t.Errorf("answered %d, own %d, neighbour writes %d, of %d misses", answered, r.Count(L3, OwnSubnet), neigh, workers*perWorker)
	}
}

// nopKernel is a Kernel that does nothing: the responder's own cost.
type nopKernel struct{ fakeKernel }

func (*nopKernel) SetFDB([6]byte, netip.Addr) error         { return nil }
func (*nopKernel) SetNeigh(netip.Addr, [6]byte, bool) error { return nil }

// BenchmarkHandle is the user-space part of answering a miss: decode,
// lookup, writes (to a kernel that does nothing), counting and logging at
// info level.
func BenchmarkHandle(b *testing.B) {
	leases := &fakeLeases{leases: []store.Lease{ownLease, peerLease, farLease}}
	// A logger at info, as vtepd runs: the miss's debug line costs its
	// level check.
	log := zap.New(zapcore.NewCore(zapcore.NewJSONEncoder(zap.NewProductionEncoderConfig()), zapcore.AddSync(io.Discard), zap.InfoLevel))
	r := NewResponder(testConfig, leases, &nopKernel{}, log)
	body := ndmsgBody(unix.AF_INET, 7, unix.NUD_INCOMPLETE, rtattr{unix.NDA_DST, []byte{10, 5, 2, 7}})
	var m Miss // reused, as the listener reuses its own
	b.ReportAllocs()
	for b.Loop() {
		d, err := Decode(body)
		if err != nil {
			b.Fatal(err)
		}
		m = d
		m.Received = time.Now()
		r.Handle(&m)
	}
}

// v4 is l's IPv4 part, what a responder for an IPv4 device answers with.
func v4(l store.Lease) store.Part {
	p, _ := l.IPv4()
	return p
}

func (k *fakeKernel) SetFDBAndNeigh(mac [6]byte, dst, ip netip.Addr, permanent bool) (error, error) {
	return k.SetFDB(mac, dst), k.SetNeigh(ip, mac, permanent)
}

func (*nopKernel) SetFDBAndNeigh([6]byte, netip.Addr, netip.Addr, bool) (error, error) {
	return nil, nil
}
