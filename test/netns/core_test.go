package netns_test

import (
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vtepd/vtepd/store"
	"github.com/vtepd/vtepd/test/netns"
	"golang.org/x/sys/unix"
)

const (
	device        = "flannel.1"
	overlayPrefix = "10.5.0.0/16"
	// Each container reserves a block of addresses per sender: the mesh
	// pings the first meshPerPair of them (plus the primary address).
	freshPerPair = 24
	meshPerPair  = 21
)

// TestCore runs the miss-driven overlay end to end on the real kernel: three
// hosts with real vtepd processes and a real etcd, then a fourth that joins
// late. (An entry that ages under steady traffic: TestAgedEntries.)
func TestCore(t *testing.T) {
	// Not parallel: its mesh holds some 330 entries of the kernel's one
	// neighbour table (flannel.1 and the container bridges), two thirds of
	// what the tests side by side may share (see main_test.go).
	ownNeighbourTable(t)
	// Every container holds freshPerPair addresses for each possible
	// sender, so that every first ping goes to an address its sender's
	// host has never resolved.
	o := newOverlay(t, "vtcore", 3, 4*freshPerPair)
	h1, h2, h3 := o.hosts[0], o.hosts[1], o.hosts[2]
	// contacted[h] is every overlay address h's kernel was asked to send
	// to; it is what h's neighbour table must hold, and nothing else.
	contacted := map[*netns.Host]map[netip.Addr]bool{}
	firstPings := map[[2]string]int{} // by ordered pair of host names
	ping := func(t *testing.T, from, to *netns.Host, addr netip.Addr) (cold, warm time.Duration) {
		t.Helper()
		ok, cold, err := from.Container.Echo(addr, time.Second)
		if err != nil || !ok {
			t.Fatalf("first ping %s -> %s %s lost (no retry allowed): %v", from.Name, to.Name, addr, err)
		}
		if !contacted[from][addr] {
			firstPings[[2]string{from.Name, to.Name}]++
		}
		ok, warm, err = from.Container.Echo(addr, time.Second)
		if err != nil || !ok {
			t.Fatalf("second ping %s -> %s %s lost: %v", from.Name, to.Name, addr, err)
		}
		for _, pair := range [][2]*netns.Host{{from, to}, {to, from}} {
			if contacted[pair[0]] == nil {
				contacted[pair[0]] = map[netip.Addr]bool{}
			}
		}
		contacted[from][addr] = true
		contacted[to][from.Container.Addr] = true // the reply path
		return cold, warm
	}
	// fresh returns the addresses on to's container reserved for from.
	fresh := func(from, to *netns.Host) []netip.Addr {
		i := from.Index - 1
		return to.Container.Extra[i*freshPerPair : (i+1)*freshPerPair]
	}
	leases := func(t *testing.T) map[string]store.Lease {
		t.Helper()
		out := map[string]store.Lease{}
		for _, h := range o.hosts {
			env, err := h.Subnet()
			if err != nil {
				t.Fatal(err)
			}
			l := leaseOf(t, o, env.Subnet.Masked())
			out[h.Name] = l
		}
		return out
	}

	t.Run("only what is talked to is installed", func(t *testing.T) {
		ping(t, h1, h2, h2.Container.Addr)
		for _, a := range fresh(h1, h2)[:5] {
			ping(t, h1, h2, a)
		}
		ls := leases(t)
		checkKernel(t, h1, contacted[h1], ls, []string{"h2"})
		checkKernel(t, h2, contacted[h2], ls, []string{"h1"})
		checkKernel(t, h3, nil, ls, nil)
	})

	var colds, warms []time.Duration
	t.Run("first packet to every fresh address", func(t *testing.T) {
		for _, from := range o.hosts {
			for _, to := range o.hosts {
				if from == to {
					continue
				}
				targets := append([]netip.Addr{to.Container.Addr}, fresh(from, to)[:meshPerPair]...)
				for _, a := range targets {
					if contacted[from][a] {
						continue // already pinged by the subtest above
					}
					cold, warm := ping(t, from, to, a)
					colds, warms = append(colds, cold), append(warms, warm)
				}
			}
		}
		for _, from := range o.hosts {
			for _, to := range o.hosts {
				if n := firstPings[[2]string{from.Name, to.Name}]; from != to && n < 20 {
					t.Errorf("test bug: %d first pings %s -> %s, want at least 20", n, from.Name, to.Name)
				}
			}
		}
		t.Logf("first pings: %d, all delivered; median cold RTT %v, median warm RTT %v (3 hosts, one kernel)",
			len(colds), median(colds), median(warms))
	})

	t.Run("kernel holds only contacted entries and one route", func(t *testing.T) {
		ls := leases(t)
		for _, h := range o.hosts {
			var peers []string
			for _, p := range o.hosts {
				if p != h {
					peers = append(peers, p.Name)
				}
			}
			checkKernel(t, h, contacted[h], ls, peers)
		}
	})

	t.Run("late host is reachable without restarts", func(t *testing.T) {
		h4 := o.addHost(t, 4*freshPerPair)
		for _, h := range []*netns.Host{h1, h2, h3} {
			for _, a := range append([]netip.Addr{h4.Container.Addr}, fresh(h, h4)[:3]...) {
				ping(t, h, h4, a)
			}
			for _, a := range fresh(h4, h)[:3] {
				ping(t, h4, h, a)
			}
		}
	})
}

// TestAgedEntries: vtepd's answers are PERMANENT and never age; an entry
// that does (an older vtepd's answer, or one written by hand) must still be
// re-confirmed when used: its PROBE miss is answered, which makes it
// PERMANENT, and no packet of a steady flow is lost meanwhile. With these
// timers a REACHABLE entry goes STALE within 0.5-1.5 s and, used, PROBE one
// second later.
func TestAgedEntries(t *testing.T) {
	t.Parallel()
	o := newOverlay(t, "vtage", 2, 1)
	h1, h2 := o.hosts[0], o.hosts[1]
	for name, v := range map[string]string{"base_reachable_time_ms": "1000", "delay_first_probe_time": "1"} {
		if err := h1.Sysctl("net/ipv4/neigh/"+device+"/"+name, v); err != nil {
			t.Fatal(err)
		}
	}
	// The peer is known first (its FDB entry, the reply path): what is
	// tested is the aging neighbour entry alone.
	firstPing(t, h1, h2.Container.Addr)
	target := h2.Container.Extra[0] // nothing was sent to it yet
	h2MAC := leaseOf(t, o, mustSubnet(t, h2)).VtepMAC
	if _, err := h1.Exec("ip", "neigh", "replace", target.String(), "dev", device, "lladdr", h2MAC.String(), "nud", "reachable"); err != nil {
		t.Fatal(err)
	}
	flow, err := h1.Container.StartFlow(target, 100*time.Millisecond)
	if err != nil {
		t.Fatal(err)
	}
	err = netns.Poll(20*time.Second, func() error {
		if missesFor(h1, target)["PROBE/answered"] == 0 || !permanent(t, h1, target) {
			return fmt.Errorf("%s: %v, not PERMANENT yet", target, missesFor(h1, target))
		}
		return nil
	})
	// A few more packets through the now PERMANENT entry, then stop: the
	// flow waits for the replies still due, so a loss is a loss.
	res := stopFlowAfter(t, flow, 5, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	if res.Sent == 0 || len(res.Lost) > 0 {
		t.Errorf("continuous ping at 10/s while the entry aged: %d sent, %d received, lost %v; want no loss", res.Sent, res.Received, res.Lost)
	}
	misses := missesFor(h1, target)
	t.Logf("%s on %s: %v, %d pings", target, h1.Name, misses, res.Sent)
	if misses["INCOMPLETE/answered"] != 0 {
		t.Errorf("%d INCOMPLETE misses for %s; want none: the aging entry failed and was resolved anew", misses["INCOMPLETE/answered"], target)
	}
}

// permanent reports whether h holds a PERMANENT neighbour entry for addr.
func permanent(t *testing.T, h *netns.Host, addr netip.Addr) bool {
	t.Helper()
	k, err := kernelOn(h, addr.Is6())
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range k.Neighbours {
		if n.IP == addr {
			return n.State&unix.NUD_PERMANENT != 0
		}
	}
	return false
}

// missesFor counts a host's logged misses for addr by "STATE/outcome".
func missesFor(h *netns.Host, addr netip.Addr) map[string]int {
	out := map[string]int{}
	for _, e := range h.Vtepd.Entries("miss") {
		if e.Str("ip") == addr.String() {
			out[e.Str("state")+"/"+e.Str("outcome")]++
		}
	}
	return out
}

// leaseOf reads the lease for subnet from etcd.
func leaseOf(t *testing.T, o *overlay, subnet netip.Prefix) store.Lease {
	t.Helper()
	c, err := o.lab.EtcdClient()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	key := store.SubnetsPrefix("/coreos.com/network") + store.SubnetKey(subnet)
	resp, err := c.Get(t.Context(), key)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("reading lease %s: %v (%d keys)", key, err, len(resp.Kvs))
	}
	l, err := store.ParseLease(store.SubnetKey(subnet), resp.Kvs[0].Value)
	if err != nil {
		t.Fatalf("lease %s: %v", key, err)
	}
	return l
}

// checkKernel asserts that h's device holds neighbour entries for exactly
// the addresses in want, each pointing at the right VTEP MAC; FDB entries for
// exactly the named peers; and one route, for the whole overlay.
func checkKernel(t *testing.T, h *netns.Host, want map[netip.Addr]bool, leases map[string]store.Lease, fdbPeers []string) {
	t.Helper()
	k, err := h.Kernel(device)
	if err != nil {
		t.Fatal(err)
	}
	macOf := func(a netip.Addr) (store.MAC, bool) {
		for _, l := range leases {
			if l.Subnet.Contains(a) {
				return l.VtepMAC, true
			}
		}
		return store.MAC{}, false
	}
	got := map[netip.Addr]bool{}
	for _, n := range k.Neighbours {
		got[n.IP] = true
		if n.State&(unix.NUD_FAILED|unix.NUD_INCOMPLETE) != 0 {
			t.Errorf("%s: neighbour %s is %#x, want a resolved state", h.Name, n.IP, n.State)
			continue
		}
		if mac, ok := macOf(n.IP); !ok || n.MAC.String() != mac.String() {
			t.Errorf("%s: neighbour %s -> %s, want %s", h.Name, n.IP, n.MAC, mac)
		}
	}
	if diff := setDiff(got, want); diff != "" {
		t.Errorf("%s: neighbour entries differ from the addresses contacted: %s", h.Name, diff)
	}

	wantFDB := map[string]bool{}
	for _, p := range fdbPeers {
		l := leases[p]
		wantFDB[fmt.Sprintf("%s dst %s", l.VtepMAC, l.PublicIP)] = true
	}
	gotFDB := map[string]bool{}
	for _, f := range k.FDB {
		gotFDB[fmt.Sprintf("%s dst %s", f.MAC, f.Dst)] = true
		if f.State&unix.NUD_PERMANENT == 0 {
			t.Errorf("%s: fdb %s dst %s is %#x, want PERMANENT", h.Name, f.MAC, f.Dst, f.State)
		}
	}
	if diff := setDiff(gotFDB, wantFDB); diff != "" {
		t.Errorf("%s: fdb entries differ from the hosts contacted: %s", h.Name, diff)
	}

	var routes []string
	for _, r := range k.Routes {
		routes = append(routes, r.Dst.String())
	}
	if len(routes) != 1 || routes[0] != overlayPrefix {
		t.Errorf("%s: routes through %s: %v, want exactly [%s]", h.Name, device, routes, overlayPrefix)
	}
}

// setDiff describes how got differs from want, or returns "".
func setDiff[K comparable](got, want map[K]bool) string {
	var extra, missing []string
	for k := range got {
		if !want[k] {
			extra = append(extra, fmt.Sprint(k))
		}
	}
	for k := range want {
		if !got[k] {
			missing = append(missing, fmt.Sprint(k))
		}
	}
	if len(extra) == 0 && len(missing) == 0 {
		return ""
	}
	slices.Sort(extra)
	slices.Sort(missing)
	return fmt.Sprintf("unexpected %v, missing %v", strings.Join(extra, " "), strings.Join(missing, " "))
}
