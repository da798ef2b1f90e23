package netns_test

import (
	"fmt"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vtepd/vtepd/store"
	"github.com/vtepd/vtepd/test/netns"
)

// TestDeviceLifecycle covers the device's life across vtepd's: an
// incompatible device is recreated with every difference named, the MTU
// follows the underlay, a stop leaves everything in place, and a restart
// adopts the device and the lease without disturbing traffic.
func TestDeviceLifecycle(t *testing.T) {
	t.Parallel()
	o := newOverlay(t, "vtdev", 2, 2)
	h1, h2 := o.hosts[0], o.hosts[1]

	t.Run("incompatible device is recreated, differences named", func(t *testing.T) {
		h3, err := o.lab.AddHost()
		if err != nil {
			t.Fatal(err)
		}
		// Left by someone else: wrong port, learning on, no miss flags, and
		// an underlay MTU of 1400.
		for _, cmd := range [][]string{
			{"ip", "link", "set", "eth0", "mtu", "1400"},
			{"ip", "link", "add", device, "type", "vxlan", "id", "1", "dstport", "4789", "local", h3.IP.String(), "dev", "eth0", "learning"},
			{"ip", "link", "set", device, "address", "02:11:22:33:44:55", "up"},
		} {
			if _, err := h3.Exec(cmd...); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := h3.StartVtepd(); err != nil {
			t.Fatal(err)
		}
		if _, err := h3.AddContainer(2); err != nil {
			t.Fatal(err)
		}
		o.hosts = append(o.hosts, h3)

		warns := h3.Vtepd.Entries("existing device is incompatible; recreating it")
		if len(warns) != 1 {
			t.Fatalf("%d warnings about the incompatible device, want 1", len(warns))
		}
		diffs := strings.Join(toStrings(warns[0]["differences"]), "; ")
		for _, want := range []string{"port 4789, want 8472", "learning true, want false", "proxy false, want true", "l2miss false, want true", "l3miss false, want true"} {
			if !strings.Contains(diffs, want) {
				t.Errorf("the warning's differences %q do not name %q", diffs, want)
			}
		}
		k, err := h3.Kernel(device)
		if err != nil {
			t.Fatal(err)
		}
		vx, ok := k.Device.(*netlink.Vxlan)
		if !ok {
			t.Fatalf("%s is a %s", device, k.Device.Type())
		}
		if vx.Port != 8472 || vx.Learning || !vx.Proxy || !vx.L2miss || !vx.L3miss || vx.VxlanId != 1 {
			t.Errorf("recreated device: port %d learning %v proxy %v l2miss %v l3miss %v vni %d", vx.Port, vx.Learning, vx.Proxy, vx.L2miss, vx.L3miss, vx.VxlanId)
		}
		if got := vx.HardwareAddr.String(); got != "02:11:22:33:44:55" {
			t.Errorf("recreated device has MAC %s, want the old device's 02:11:22:33:44:55", got)
		}
		if vx.MTU != 1350 {
			t.Errorf("device MTU %d, want 1350 (underlay 1400 - 50)", vx.MTU)
		}
		env, err := h3.Subnet()
		if err != nil {
			t.Fatal(err)
		}
		if env.MTU != 1350 {
			t.Errorf("FLANNEL_MTU=%d, want 1350", env.MTU)
		}
		for _, pair := range [][2]*netns.Host{{h3, h1}, {h1, h3}} {
			firstPing(t, pair[0], pair[1].Container.Addr)
		}
	})

	t.Run("second agent on the same device refuses to start", func(t *testing.T) {
		// With the same flags it meets the first one's HTTP port; with
		// another port, the device's lock.
		for i, extra := range [][]string{nil, {"--http-addr", "127.0.0.1:9743"}} {
			args := append([]string{o.lab.Bin.Vtepd, "run",
				"--etcd-endpoints", strings.Join(o.lab.Endpoints(), ","),
				"--subnet-file", h1.SubnetFile + ".second", "--log-format", "json"}, extra...)
			p, err := o.lab.Start(h1.NS, fmt.Sprintf("h1.vtepd-second-%d", i), args...)
			if err != nil {
				t.Fatal(err)
			}
			if err := p.Wait(20 * time.Second); err == nil {
				t.Fatalf("second vtepd exited 0, want an error\n%s", p.Tail(10))
			}
			if !strings.Contains(p.Log(), "another vtepd already runs") {
				t.Errorf("second vtepd (%v) did not say why it stopped:\n%s", extra, p.Tail(10))
			}
		}
		if done, _ := h1.Vtepd.Exited(); done {
			t.Errorf("the first vtepd stopped too")
		}
	})

	t.Run("restart adopts device and lease without loss", func(t *testing.T) {
		env, err := h1.Subnet()
		if err != nil {
			t.Fatal(err)
		}
		key := store.SubnetsPrefix("/coreos.com/network") + store.SubnetKey(env.Subnet.Masked())
		rev := modRevision(t, o, key)

		// 100 packets a second across the whole stop and start.
		if ok, _, err := h1.Container.Echo(h2.Container.Addr, time.Second); err != nil || !ok {
			t.Fatalf("warm-up ping lost: %v", err)
		}
		before, err := h1.Kernel(device)
		if err != nil {
			t.Fatal(err)
		}
		flow := startFlow(t, h1, h2.Container.Addr)

		if err := h1.Vtepd.Signal(syscall.SIGTERM); err != nil {
			t.Fatal(err)
		}
		if err := h1.Vtepd.Wait(10 * time.Second); err != nil {
			t.Fatalf("vtepd did not exit cleanly on SIGTERM: %v\n%s", err, h1.Vtepd.Tail(10))
		}
		stopped, err := h1.Kernel(device)
		if err != nil {
			t.Fatalf("device gone after SIGTERM: %v", err)
		}
		if stopped.Device.Attrs().Index != before.Device.Attrs().Index || len(stopped.FDB) != len(before.FDB) || len(stopped.Neighbours) < len(before.Neighbours) {
			t.Errorf("SIGTERM did not leave device and entries in place: before %d fdb %d neigh, after %d fdb %d neigh",
				len(before.FDB), len(before.Neighbours), len(stopped.FDB), len(stopped.Neighbours))
		}

		// Timers that keep idle entries probing forever, set while vtepd
		// was away: the adopted device keeps them, and vtepd says so.
		for name, v := range map[string]string{"base_reachable_time_ms": "1000", "delay_first_probe_time": "1"} {
			if err := h1.Sysctl("net/ipv4/neigh/"+device+"/"+name, v); err != nil {
				t.Fatal(err)
			}
		}
		if _, err := h1.StartVtepd(); err != nil {
			t.Fatal(err)
		}
		if n := len(h1.Vtepd.Entries("neighbour timers keep idle entries alive")); n != 1 {
			t.Errorf("%d warnings about base_reachable_time_ms=1000 against delay_first_probe_time=1, want 1", n)
		}
		if len(h1.Vtepd.Entries("adopted existing VXLAN device")) != 1 {
			t.Errorf("restarted vtepd did not adopt the device:\n%s", h1.Vtepd.Tail(10))
		}
		after, err := h1.Kernel(device)
		if err != nil {
			t.Fatal(err)
		}
		if after.Device.Attrs().Index != before.Device.Attrs().Index {
			t.Errorf("device recreated on restart: ifindex %d -> %d", before.Device.Attrs().Index, after.Device.Attrs().Index)
		}
		if got := modRevision(t, o, key); got != rev {
			t.Errorf("restart rewrote the lease %s (mod revision %d -> %d); peers would see a change", key, rev, got)
		}

		// Traffic goes on for half a second more after the restart.
		res := stopFlowAfter(t, flow, 50, 10*time.Second)
		if len(res.Lost) > 0 {
			t.Errorf("ping at 100/s across a vtepd restart: %d sent, %d received, lost %v; want no loss", res.Sent, res.Received, res.Lost)
		}
	})
}

func modRevision(t *testing.T, o *overlay, key string) int64 {
	t.Helper()
	c, err := o.lab.EtcdClient()
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	resp, err := c.Get(t.Context(), key)
	if err != nil || len(resp.Kvs) != 1 {
		t.Fatalf("reading %s: %v", key, err)
	}
	return resp.Kvs[0].ModRevision
}

func toStrings(v any) []string {
	var out []string
	if list, ok := v.([]any); ok {
		for _, x := range list {
			if s, ok := x.(string); ok {
				out = append(out, s)
			}
		}
	}
	return out
}
