package netns_test

import (
	"errors"
	"fmt"
	"net/netip"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/vtepd/vtepd/fabric"
	"github.com/vtepd/vtepd/test/netns"
)

// TestHostAnswerMode: with --answer=host the first miss for a peer installs
// a route for its whole subnet via its first address, so a host talking to
// thousands of a peer's addresses holds a handful of neighbour entries, far
// below the kernel's table limit; the route is kept across restarts and
// device flaps, and goes with the lease.
func TestHostAnswerMode(t *testing.T) {
	limits, err := netns.NeighbourLimits()
	if err != nil {
		t.Fatal(err)
	}
	// Not parallel: its burst needs room in the kernel's one neighbour
	// table, and the default limit.
	ownNeighbourTable(t)
	o := newStormOverlay(t, "vthost", "--answer", "host")
	h1, h2 := o.hosts[0], o.hosts[1]
	peer := leaseOf(t, o, mustSubnet(t, h2))
	hostRoute := fabric.Route{Dst: peer.Subnet, Via: peer.Gateway()}.String()

	t.Run("a burst past the table limit is delivered", func(t *testing.T) {
		if limits[2] != "1024" {
			t.Skipf("gc_thresh3 is %s here; this subtest is about the default 1024", limits[2])
		}
		// The burst goes to the upper half of h2's /20, where nothing
		// lives: h2 drops it after counting it, instead of asking the
		// (kernel-wide) neighbour table about 2000 absent containers.
		half := upperHalf(peer.Subnet)
		if _, err := h2.Exec("ip", "route", "add", "blackhole", half.String()); err != nil {
			t.Fatal(err)
		}
		// The first miss for the host installs its route. (Sent alone: a
		// burst at full speed races the answer, and on a loaded machine
		// the kernel fills its table before a race-built vtepd is
		// scheduled.)
		burst(t, o, h1, half.Addr(), 1)
		var k netns.Kernel
		err := netns.Poll(5*time.Second, func() error {
			var err error
			if k, err = h1.Kernel(device); err == nil && !hasRoute(k, hostRoute) {
				err = fmt.Errorf("no route %s on %s: %v", hostRoute, h1.Name, routeStrings(k))
			}
			return err
		})
		if err != nil {
			t.Fatal(err)
		}
		entries := len(k.Neighbours)
		// Then 2000 more destinations on that host, twice the table's
		// limit: all delivered, not one more neighbour entry.
		const n = 2000
		before := rxPackets(t, h2)
		sent, errs := burst(t, o, h1, half.Addr().Next(), n)
		var delivered int
		netns.Poll(3*time.Second, func() error {
			if delivered = rxPackets(t, h2) - before; delivered < n {
				return errStillThere
			}
			return nil
		})
		if k, err = h1.Kernel(device); err != nil {
			t.Fatal(err)
		}
		t.Logf("host mode, gc_thresh3=1024: burst of %d (%d sent, %d refused at send): %d delivered; %d neighbour entries on %s, %d before the burst",
			n, sent, errs, delivered, len(k.Neighbours), h1.Name, entries)
		if delivered < n {
			t.Errorf("%d of %d delivered, want all", delivered, n)
		}
		if len(k.Neighbours) != entries {
			t.Errorf("a burst to %d destinations on one host: %d neighbour entries, had %d", n, len(k.Neighbours), entries)
		}
		// More traffic to the host adds no entry either.
		more := half.Addr().Next()
		for range n {
			more = more.Next()
		}
		burst(t, o, h1, more, 40)
		if k, err = h1.Kernel(device); err != nil || len(k.Neighbours) != entries {
			t.Errorf("40 more destinations on the same host: %d neighbour entries, had %d (%v)", len(k.Neighbours), entries, err)
		}
	})

	t.Run("restart keeps the host route", func(t *testing.T) {
		firstPing(t, h1, h2.Container.Addr) // the route exists even if the burst was skipped
		h1.Vtepd.Kill()
		if _, err := h1.StartVtepd("--answer", "host"); err != nil {
			t.Fatal(err)
		}
		k, err := h1.Kernel(device)
		if err != nil {
			t.Fatal(err)
		}
		if !hasRoute(k, hostRoute) {
			t.Errorf("host route gone after a restart: %v", routeStrings(k))
		}
		firstPing(t, h1, h2.Container.Extra[0])
	})

	t.Run("device down and up restores it", func(t *testing.T) {
		for _, state := range []string{"down", "up"} {
			if _, err := h1.Exec("ip", "link", "set", device, state); err != nil {
				t.Fatal(err)
			}
		}
		err := netns.Poll(5*time.Second, func() error {
			k, err := h1.Kernel(device)
			if err != nil || !hasRoute(k, hostRoute) || !hasRoute(k, "10.6.0.0/16") {
				return fmt.Errorf("routes: %v %v", routeStrings(k), err)
			}
			return nil
		})
		if err != nil {
			t.Errorf("after down and up: %v", err)
		}
		firstPing(t, h1, h2.Container.Extra[1])
	})

	t.Run("address mode removes host routes at start", func(t *testing.T) {
		h1.Vtepd.Kill()
		if _, err := h1.StartVtepd(); err != nil {
			t.Fatal(err)
		}
		k, err := h1.Kernel(device)
		if err != nil {
			t.Fatal(err)
		}
		if hasRoute(k, hostRoute) || len(k.Routes) != 1 {
			t.Errorf("routes in address mode after a host-mode run: %v, want only the overlay's", routeStrings(k))
		}
		h1.Vtepd.Kill()
		if _, err := h1.StartVtepd("--answer", "host"); err != nil {
			t.Fatal(err)
		}
	})

	t.Run("the lease takes route, neighbours and FDB entry with it", func(t *testing.T) {
		firstPing(t, h1, h2.Container.Addr)
		k, err := h1.Kernel(device)
		if err != nil || !hasRoute(k, hostRoute) {
			t.Fatalf("no host route before the removal: %v %v", routeStrings(k), err)
		}
		h2.Vtepd.Kill()
		del(t, etcdClient(t, o.lab), leaseKey(peer.Subnet))
		deleted := time.Now()
		took, err := goneWithin(t, h1, peer.VtepMAC, peer.Subnet, 5*time.Second)
		if err != nil || took > time.Second {
			t.Errorf("entries gone after %v: %v", took, err)
		}
		// The route goes with them, within the same second: the removals
		// are several writes, which a read can fall between.
		var after netns.Kernel
		err = netns.Poll(5*time.Second, func() error {
			var err error
			if after, err = h1.Kernel(device); err == nil && hasRoute(after, hostRoute) {
				err = errStillThere
			}
			return err
		})
		if took := time.Since(deleted); err != nil || took > time.Second {
			t.Errorf("host route left %v after the lease went: %v %v", took.Round(time.Millisecond), routeStrings(after), err)
		}
	})
}

// TestJoinAnswersWaitingPeers: a peer that sent to a new host before its
// lease existed got no answer, and the kernel asks again only a second
// later; when the lease appears, vtepd answers it at once.
func TestJoinAnswersWaitingPeers(t *testing.T) {
	t.Parallel()
	o := newOverlay(t, "vtjoin", 1, 0)
	h1 := o.hosts[0]
	// The new host will take the subnet its subnet file names, if free.
	want := netip.MustParsePrefix("10.5.77.0/24")
	if mustSubnet(t, h1) == want {
		want = netip.MustParsePrefix("10.5.78.0/24")
	}
	h2, err := o.lab.AddHost()
	if err != nil {
		t.Fatal(err)
	}
	hint := fmt.Sprintf("FLANNEL_NETWORK=%s\nFLANNEL_SUBNET=%s\nFLANNEL_MTU=1450\nFLANNEL_IPMASQ=false\n", overlayPrefix,
		netip.PrefixFrom(want.Addr().Next(), want.Bits()))
	if err := os.WriteFile(h2.SubnetFile, []byte(hint), 0o644); err != nil {
		t.Fatal(err)
	}
	// The peer sends first: no lease, no answer.
	pinger, err := h1.Container.StartPing("h1.ping-join", want.Addr(), "-c1", "-W5")
	if err != nil {
		t.Fatal(err)
	}
	if err := netns.Poll(5*time.Second, func() error {
		if countLog(h1, "miss", "ip", want.Addr().String()) == 0 {
			return errStillThere
		}
		return nil
	}); err != nil {
		t.Fatal("h1 never asked about the new host's address")
	}
	p, err := h2.StartVtepdNoWait()
	if err != nil {
		t.Fatal(err)
	}
	if err := h2.WaitReady(p, 30*time.Second); err != nil {
		t.Fatal(err)
	}
	if got := mustSubnet(t, h2); got != want {
		t.Fatalf("new host took %s, want %s", got, want)
	}
	if err := pinger.Wait(10 * time.Second); err != nil {
		t.Fatalf("the ping sent before the lease existed was never answered: %v\n%s", err, pinger.Log())
	}
	res, err := netns.ParsePing(pinger.Log())
	if err != nil || res.Received != 1 {
		t.Fatalf("ping sent before the lease existed: %v %+v", err, res)
	}
	// The reply can arrive before vtepd has logged the sweep that let it.
	err = netns.Poll(2*time.Second, func() error {
		answered := 0
		for _, e := range h1.Vtepd.Entries("a new lease appeared; answered the addresses peers were waiting on") {
			answered += logInt(t, e, "answered")
		}
		if answered == 0 {
			return errors.New("no sweep answered the waiting peer when the lease appeared")
		}
		return nil
	})
	if err != nil {
		t.Error(err)
	}
	t.Logf("a ping sent before the new host's lease existed: answered by the sweep, RTT %v (the kernel's own retry would have come after 1 s)", res.RTTs[0])
}

// upperHalf returns the upper half of p.
func upperHalf(p netip.Prefix) netip.Prefix {
	a := p.Addr().As4()
	bit := uint32(1) << (32 - p.Bits() - 1)
	v := uint32(a[0])<<24 | uint32(a[1])<<16 | uint32(a[2])<<8 | uint32(a[3]) | bit
	return netip.PrefixFrom(netip.AddrFrom4([4]byte{byte(v >> 24), byte(v >> 16), byte(v >> 8), byte(v)}), p.Bits()+1)
}

// rxPackets is the count of packets h's VXLAN device has received.
func rxPackets(t *testing.T, h *netns.Host) int {
	t.Helper()
	b, err := h.Exec("cat", "/sys/class/net/"+device+"/statistics/rx_packets")
	if err != nil {
		t.Fatal(err)
	}
	n, err := strconv.Atoi(strings.TrimSpace(b))
	if err != nil {
		t.Fatal(err)
	}
	return n
}

func routeStrings(k netns.Kernel) []string {
	var out []string
	for _, r := range k.Routes {
		s := r.Dst.String()
		if r.Gw != nil {
			s += " via " + r.Gw.String() + " onlink"
		}
		out = append(out, s)
	}
	return out
}

func hasRoute(k netns.Kernel, want string) bool {
	for _, r := range routeStrings(k) {
		if r == want {
			return true
		}
	}
	return false
}
