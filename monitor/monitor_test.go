package monitor

import (
	"bytes"
	"context"
	"encoding/json"
	"net"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/vtepd/vtepd/fabric"
	"github.com/vtepd/vtepd/miss"
	"github.com/vtepd/vtepd/store"
	lab "github.com/vtepd/vtepd/test/netns"
	clientv3 "go.etcd.io/etcd/client/v3"
	"go.etcd.io/etcd/server/v3/embed"
	"go.uber.org/zap"
)

// These tests run the monitor on real misses of a real VXLAN device. The
// monitor reads the kernel in the namespace of the process it runs in, as
// `vtepd monitor` does, so each test runs twice: here, where it makes a lab
// host (test/netns: a namespace with eth0 on an underlay bridge, nothing in
// the namespace the tests are started in) and runs this test binary again
// inside it, with `ip netns exec`; and there, where it does the work.

// envInNS tells the test binary which test it runs inside its namespace.
const envInNS = "VTEPD_MONITOR_TEST_IN_NS"

// inOwnNamespace reports whether t runs inside its namespace, where it does
// its work. Outside, it makes the namespace (lab name is unique to the
// test), runs t there, reports how that went, and returns false.
func inOwnNamespace(t *testing.T, name string) bool {
	t.Helper()
	if os.Getenv(envInNS) == t.Name() {
		return true
	}
	if os.Geteuid() != 0 {
		t.Skip("skipping: needs root, to make a network namespace with a VXLAN device; run `sudo make test`")
	}
	l, err := lab.New(lab.Options{Name: name, Dir: t.TempDir()})
	if err != nil {
		t.Fatalf("making the namespace: %v", err)
	}
	t.Cleanup(func() {
		if err := l.Close(); err != nil {
			t.Errorf("deleting the namespace: %v", err)
		}
	})
	h, err := l.AddHost()
	if err != nil {
		t.Fatal(err)
	}
	if h.IP != underlayAddr {
		t.Fatalf("test bug: the lab's host has %s, the test expects %s", h.IP, underlayAddr)
	}
	ctx, cancel := context.WithTimeout(t.Context(), 2*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "ip", "netns", "exec", h.NS, os.Args[0],
		"-test.run", "^"+t.Name()+"$", "-test.count", "1", "-test.v")
	cmd.Env = append(os.Environ(), envInNS+"="+t.Name())
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("in namespace %s: %v\n%s", h.NS, err, out)
	}
	if !bytes.Contains(out, []byte("--- PASS: "+t.Name())) {
		t.Fatalf("in namespace %s the test did not pass:\n%s", h.NS, out)
	}
	return false
}

// testDevice is the VXLAN device as vtepd makes it on the lab host's eth0, and
// a writer for its entries, with which the tests answer misses as vtepd
// would (or wrongly).
type testDevice struct {
	dev     *fabric.Device
	entries *fabric.Entries
}

var underlayAddr = netip.MustParseAddr("198.51.100.11") // the lab's first host

func newDevice(t *testing.T) *testDevice {
	t.Helper()
	eth0, err := net.InterfaceByName("eth0")
	if err != nil {
		t.Fatal(err)
	}
	underlay := fabric.Underlay{Name: "eth0", Index: eth0.Index, MTU: eth0.MTU, Addr: underlayAddr, PublicIP: underlayAddr}
	dev, err := fabric.EnsureDevice(fabric.DeviceSpec{Name: "flannel.1", VNI: 1, Port: 8472, Underlay: underlay}, zap.NewNop())
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	if err := dev.EnableAppProbes(); err != nil {
		t.Fatal(err)
	}
	if _, err := dev.SetAddress(netip.MustParseAddr("10.5.1.0")); err != nil {
		t.Fatal(err)
	}
	// The overlay's route, and one for addresses outside it that are
	// sent into the device all the same.
	routes := []fabric.Route{{Dst: netip.MustParsePrefix("10.5.0.0/16")}, {Dst: netip.MustParsePrefix("10.6.0.0/16")}}
	if _, err := dev.EnsureRoutes(netip.MustParseAddr("10.5.1.0"), routes); err != nil {
		t.Fatal(err)
	}
	e, err := fabric.OpenEntries(dev.Index, dev.Name)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	return &testDevice{dev: dev, entries: e}
}

// send sends one datagram to addr: the kernel asks about addr (an L3 miss),
// or, with a neighbour entry for it but no FDB entry for its MAC, about the
// MAC (an L2 miss).
func send(t *testing.T, addr netip.Addr) {
	t.Helper()
	c, err := net.Dial("udp4", netip.AddrPortFrom(addr, 9).String())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if _, err := c.Write([]byte("miss")); err != nil {
		t.Fatal(err)
	}
}

// syncWriter is what a monitor writes to, read while it writes.
type syncWriter struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (w *syncWriter) Write(p []byte) (int, error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.Write(p)
}

func (w *syncWriter) String() string {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.buf.String()
}

// start runs a monitor until the test ends, and returns what it writes.
func start(t *testing.T, opts Options) *syncWriter {
	t.Helper()
	w := &syncWriter{}
	m, err := New(w, opts)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	go func() { done <- m.Run(ctx) }()
	t.Cleanup(func() {
		cancel()
		select {
		case err := <-done:
			if err != nil {
				t.Errorf("monitor: %v", err)
			}
		case <-time.After(5 * time.Second):
			t.Errorf("monitor did not stop within 5s of its context")
		}
		m.Close()
	})
	return w
}

// events parses a JSON monitor's output.
func events(t *testing.T, out string) []Event {
	t.Helper()
	var evs []Event
	for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
		if l == "" {
			continue
		}
		var ev Event
		if err := json.Unmarshal([]byte(l), &ev); err != nil {
			t.Fatalf("monitor line %q: %v", l, err)
		}
		evs = append(evs, ev)
	}
	return evs
}

// waitEvent waits until the monitor has shown an event that match selects.
func waitEvent(t *testing.T, w *syncWriter, what string, match func(Event) bool) Event {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for {
		for _, ev := range events(t, w.String()) {
			if match(ev) {
				return ev
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("the monitor never showed %s; it showed:\n%s", what, w.String())
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// startEtcd starts a one-member etcd inside the test's namespace, on its
// loopback, and returns a client for it.
func startEtcd(t *testing.T) *clientv3.Client {
	t.Helper()
	cfg := embed.NewConfig()
	cfg.Name = "monitor-test"
	cfg.Dir = t.TempDir()
	cfg.LogLevel = "error"
	cfg.ZapLoggerBuilder = embed.NewZapLoggerBuilder(zap.NewNop())
	cfg.UnsafeNoFsync = true
	cfg.TickMs, cfg.ElectionMs = 10, 100
	loopback := url.URL{Scheme: "http", Host: "127.0.0.1:0"}
	cfg.ListenClientUrls, cfg.AdvertiseClientUrls = []url.URL{loopback}, []url.URL{loopback}
	cfg.ListenPeerUrls, cfg.AdvertisePeerUrls = []url.URL{loopback}, []url.URL{loopback}
	cfg.InitialCluster = cfg.InitialClusterFromName(cfg.Name)
	e, err := embed.StartEtcd(cfg)
	if err != nil {
		t.Fatalf("start etcd: %v", err)
	}
	t.Cleanup(e.Close)
	select {
	case <-e.Server.ReadyNotify():
	case err := <-e.Err():
		t.Fatalf("etcd failed: %v", err)
	case <-time.After(30 * time.Second):
		t.Fatal("etcd not ready after 30s")
	}
	c, err := clientv3.New(clientv3.Config{Endpoints: []string{e.Clients[0].Addr().String()}, DialTimeout: 10 * time.Second, Logger: zap.NewNop()})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

const prefix = "/coreos.com/network"

// leaseTable writes the network config and leases to etcd and returns a
// table synced with them, as `vtepd monitor --etcd-endpoints` has.
func leaseTable(t *testing.T, leases ...store.Lease) (*store.Table, netip.Prefix) {
	t.Helper()
	c := startEtcd(t)
	ctx, cancel := context.WithTimeout(t.Context(), 30*time.Second)
	defer cancel()
	config := `{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan"}}`
	if _, err := c.Put(ctx, store.ConfigKey(prefix), config); err != nil {
		t.Fatal(err)
	}
	for _, l := range leases {
		if _, err := c.Put(ctx, store.SubnetsPrefix(prefix)+store.SubnetKey(l.Subnet), string(l.Value())); err != nil {
			t.Fatal(err)
		}
	}
	cfg, err := store.ParseConfig(store.ConfigKey(prefix), []byte(config))
	if err != nil {
		t.Fatal(err)
	}
	table := store.NewTable(cfg)
	sctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		table.Sync(sctx, c, prefix, zap.NewNop())
	}()
	t.Cleanup(func() { stop(); <-done })
	select {
	case <-table.Synced():
	case <-time.After(10 * time.Second):
		t.Fatal("lease table not synced within 10s")
	}
	if table.Len() != len(leases) {
		t.Fatalf("table holds %d leases, want %d", table.Len(), len(leases))
	}
	return table, cfg.Network
}

func lease(subnet string, publicIP string, mac store.MAC) store.Lease {
	return store.Lease{Subnet: netip.MustParsePrefix(subnet), PublicIP: netip.MustParseAddr(publicIP), VtepMAC: mac, VNI: 1}
}

func ip(s string) netip.Addr { return netip.MustParseAddr(s) }

// TestMonitorMisses: with the lease table, what the monitor shows for each
// kind of real miss: the lease that would answer it and whether the kernel
// holds the right entries after the settle time, when it was answered
// right, answered wrong, or not at all; a miss with no lease, one in this
// host's own subnet, one outside the overlay; and an L2 miss. The JSON and
// the text output say the same.
func TestMonitorMisses(t *testing.T) {
	t.Parallel()
	if !inOwnNamespace(t, "vtmonm") {
		return
	}
	l := newDevice(t)
	peerA := lease("10.5.2.0/24", "198.51.100.12", store.MAC{0x02, 0xaa, 0, 0, 0, 0x02})
	peerB := lease("10.5.3.0/24", "198.51.100.13", store.MAC{0x02, 0xaa, 0, 0, 0, 0x03})
	own := lease("10.5.1.0/24", underlayAddr.String(), store.MAC(l.dev.MAC))
	table, network := leaseTable(t, own, peerA, peerB)
	opts := Options{Leases: table, Networks: []netip.Prefix{network}, Settle: 300 * time.Millisecond}
	text := start(t, opts)
	opts.JSON = true
	js := start(t, opts)

	l3 := func(a netip.Addr) func(Event) bool {
		return func(ev Event) bool { return ev.Kind == "L3" && ev.IP == a.String() }
	}
	check := func(ev Event, verdict string, lease *store.Lease, right *bool) {
		t.Helper()
		if ev.Device != "flannel.1" || ev.Verdict != verdict || ev.Time.IsZero() {
			t.Errorf("%s %s%s: device %q, verdict %q, time %v; want flannel.1, %q", ev.Kind, ev.IP, ev.MAC, ev.Device, ev.Verdict, ev.Time, verdict)
		}
		switch {
		case lease == nil && ev.Lease != nil:
			t.Errorf("%s %s%s: lease %+v, want none", ev.Kind, ev.IP, ev.MAC, *ev.Lease)
		case lease != nil && (ev.Lease == nil || *ev.Lease != LeaseView{lease.Subnet.String(), lease.PublicIP.String(), lease.VtepMAC.String()}):
			t.Errorf("%s %s%s: lease %+v, want %s", ev.Kind, ev.IP, ev.MAC, ev.Lease, lease.Subnet)
		}
		switch {
		case right == nil && ev.Right != nil:
			t.Errorf("%s %s%s: right %v, want no judgement", ev.Kind, ev.IP, ev.MAC, *ev.Right)
		case right != nil && (ev.Right == nil || *ev.Right != *right):
			t.Errorf("%s %s%s: right %v, want %v (neigh %q, fdb %q)", ev.Kind, ev.IP, ev.MAC, ev.Right, *right, ev.Neigh, ev.FDB)
		}
	}
	yes, no := true, false

	// Answered as vtepd answers, within the settle time.
	a := ip("10.5.2.7")
	send(t, a)
	if err := l.entries.SetNeigh(a, peerA.VtepMAC, true); err != nil {
		t.Fatal(err)
	}
	if err := l.entries.SetFDB(peerA.VtepMAC, peerA.PublicIP); err != nil {
		t.Fatal(err)
	}
	ev := waitEvent(t, js, "the answered miss", l3(a))
	check(ev, "answer", &peerA, &yes)
	if ev.State != "INCOMPLETE" || !strings.HasPrefix(ev.Neigh, peerA.VtepMAC.String()+" ") || ev.FDB != peerA.VtepMAC.String()+" dst "+peerA.PublicIP.String() {
		t.Errorf("answered miss: state %s, neigh %q, fdb %q", ev.State, ev.Neigh, ev.FDB)
	}

	// Answered with the wrong VTEP's MAC.
	b := ip("10.5.3.9")
	send(t, b)
	if err := l.entries.SetNeigh(b, peerA.VtepMAC, true); err != nil {
		t.Fatal(err)
	}
	check(waitEvent(t, js, "the miss answered wrong", l3(b)), "answer", &peerB, &no)

	// No lease: nobody answers, and the kernel asks three times (its
	// app_solicit), one second apart.
	nowhere := ip("10.5.9.1")
	send(t, nowhere)
	ev = waitEvent(t, js, "the miss without a lease", l3(nowhere))
	check(ev, "no_lease", nil, nil)
	if ev.Neigh != "INCOMPLETE" {
		t.Errorf("unanswered miss: neigh %q, want INCOMPLETE", ev.Neigh)
	}

	// This host's own subnet, and outside the overlay.
	ownAddr, outside := ip("10.5.1.5"), ip("10.6.0.1")
	send(t, ownAddr)
	send(t, outside)
	check(waitEvent(t, js, "the miss in the own subnet", l3(ownAddr)), "own_subnet", nil, nil)
	check(waitEvent(t, js, "the miss outside the overlay", l3(outside)), "outside_overlay", nil, nil)

	// L2: the kernel knows the address's MAC (peer B's) but not where the
	// MAC lives; answered within the settle time.
	c := ip("10.5.3.40")
	if err := l.entries.SetNeigh(c, peerB.VtepMAC, true); err != nil {
		t.Fatal(err)
	}
	send(t, c)
	if err := l.entries.SetFDB(peerB.VtepMAC, peerB.PublicIP); err != nil {
		t.Fatal(err)
	}
	ev = waitEvent(t, js, "the L2 miss", func(ev Event) bool { return ev.Kind == "L2" && ev.MAC == peerB.VtepMAC.String() })
	check(ev, "answer", &peerB, &yes)
	if ev.IP != "" || ev.FDB != peerB.VtepMAC.String()+" dst "+peerB.PublicIP.String() {
		t.Errorf("L2 miss: ip %q, fdb %q", ev.IP, ev.FDB)
	}

	// The kernel's two further probes of the address without a lease.
	deadline := time.Now().Add(5 * time.Second)
	for n := 0; n < 3; {
		n = 0
		for _, ev := range events(t, js.String()) {
			if l3(nowhere)(ev) {
				n++
			}
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d misses shown for %s, want the kernel's 3", n, nowhere)
		}
		time.Sleep(50 * time.Millisecond)
	}

	// The text output, line by line the same events.
	waitText := func(want ...string) {
		t.Helper()
		deadline := time.Now().Add(5 * time.Second)
		for {
			for _, line := range strings.Split(text.String(), "\n") {
				all := true
				for _, w := range want {
					all = all && strings.Contains(line, w)
				}
				if all {
					return
				}
			}
			if time.Now().After(deadline) {
				t.Fatalf("no text line with %q:\n%s", want, text.String())
			}
			time.Sleep(10 * time.Millisecond)
		}
	}
	waitText("flannel.1", "L3 "+a.String(), "INCOMPLETE", "answer lease=10.5.2.0/24 vtep=198.51.100.12/02:aa:00:00:00:02",
		`fdb="02:aa:00:00:00:02 dst 198.51.100.12"`, "kernel=right")
	waitText("L3 "+b.String(), "answer lease=10.5.3.0/24", "kernel=WRONG")
	waitText("L3 "+nowhere.String(), "no_lease", `neigh="INCOMPLETE"`)
	waitText("L3 "+ownAddr.String(), "own_subnet")
	waitText("L3 "+outside.String(), "outside_overlay")
	waitText("L2 "+peerB.VtepMAC.String(), "answer lease=10.5.3.0/24", "kernel=right")
}

// TestMonitorFilters: without a lease table (and with no settle time) the
// monitor shows the misses and the kernel's entries as they are, and
// judges nothing; --kind and --dev leave out what they filter.
func TestMonitorFilters(t *testing.T) {
	t.Parallel()
	if !inOwnNamespace(t, "vtmonf") {
		return
	}
	l := newDevice(t)
	all := start(t, Options{JSON: true})
	l2only := start(t, Options{JSON: true, Kind: miss.L2})
	other := start(t, Options{JSON: true, Device: "flannel.9"})

	a := ip("10.5.2.7")
	send(t, a)
	ev := waitEvent(t, all, "the L3 miss", func(ev Event) bool { return ev.Kind == "L3" && ev.IP == a.String() })
	if ev.Verdict != "" || ev.Lease != nil || ev.Right != nil || ev.Neigh != "INCOMPLETE" || ev.FDB != "" {
		t.Errorf("without a table: verdict %q lease %v right %v neigh %q fdb %q; want only the kernel's entries", ev.Verdict, ev.Lease, ev.Right, ev.Neigh, ev.FDB)
	}
	mac := store.MAC{0x02, 0xaa, 0, 0, 0, 0x07}
	b := ip("10.5.2.8")
	if err := l.entries.SetNeigh(b, mac, true); err != nil {
		t.Fatal(err)
	}
	send(t, b)
	waitEvent(t, l2only, "the L2 miss", func(ev Event) bool { return ev.Kind == "L2" && ev.MAC == mac.String() })
	ev = waitEvent(t, all, "the L2 miss", func(ev Event) bool { return ev.Kind == "L2" && ev.MAC == mac.String() })
	if ev.FDB != mac.String()+" none" {
		t.Errorf("L2 miss nobody answered: fdb %q, want %q", ev.FDB, mac.String()+" none")
	}
	for _, ev := range events(t, l2only.String()) {
		if ev.Kind != "L2" {
			t.Errorf("--kind l2 showed %+v", ev)
		}
	}
	if out := other.String(); out != "" {
		t.Errorf("--dev flannel.9 showed misses of flannel.1:\n%s", out)
	}
}
