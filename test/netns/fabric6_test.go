package netns_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"github.com/vtepd/vtepd/fabric"
	lab "github.com/vtepd/vtepd/test/netns"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"
	"golang.org/x/sys/unix"
)

// The IPv6 overlay of these tests: fd00:10::/48, host N's subnet
// fd00:10:0:N::/64, its device address the subnet's first (fd00:10:0:N::,
// as flannel gives it). The IPv6 underlay: 2001:db8:5::/64 on the lab's
// bridge, host N at 2001:db8:5::(10+N).
var (
	overlay6 = netip.MustParsePrefix("fd00:10::/48")
	// underlay6 is the lab's IPv6 underlay subnet.
	underlay6 = netip.MustParsePrefix("2001:db8:5::/64")
)

func subnet6(n int) netip.Prefix {
	return netip.PrefixFrom(netip.AddrFrom16([16]byte{0xfd, 0, 0, 0x10, 7: byte(n)}), 64)
}

func underlayAddr6(h *lab.Host) netip.Addr {
	a := underlay6.Addr().As16()
	a[15] = byte(10 + h.Index)
	return netip.AddrFrom16(a)
}

// host6 is a lab host with an IPv6 VXLAN device as fabric makes it.
type host6 struct {
	h      *lab.Host
	ns     netns.NsHandle
	u      fabric.Underlay
	dev    *fabric.Device
	e      *fabric.Entries
	subnet netip.Prefix
	logs   *observer.ObservedLogs
}

// addHost6 adds a host to l and, if v6Underlay, an IPv6 address on its
// eth0 (no DAD: the lab's addresses are its own).
func addHost6(t *testing.T, l *lab.Lab, v6Underlay bool) *lab.Host {
	t.Helper()
	h, err := l.AddHost()
	if err != nil {
		t.Fatal(err)
	}
	if v6Underlay {
		mustExec(t, h, "ip", "addr", "add", underlayAddr6(h).String()+"/64", "dev", "eth0", "nodad")
	}
	return h
}

// nsOf opens h's namespace, closed with the test.
func nsOf(t *testing.T, h *lab.Host) netns.NsHandle {
	t.Helper()
	ns, err := netns.GetFromName(h.NS)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

// ensureDevice6 runs fabric.EnsureDevice and EnableAppProbes in h's
// namespace, as the agent runs them in its own.
func ensureDevice6(h *lab.Host, spec fabric.DeviceSpec, log *zap.Logger) (*fabric.Device, error) {
	var dev *fabric.Device
	err := lab.Do(h.NS, func() error {
		d, err := fabric.EnsureDevice(spec, log)
		if err != nil {
			return err
		}
		if err := d.EnableAppProbes(); err != nil {
			d.Close()
			return err
		}
		dev = d
		return nil
	})
	return dev, err
}

// findUnderlay6 chooses h's underlay for stack.
func findUnderlay6(t *testing.T, ns netns.NsHandle, spec fabric.UnderlaySpec) fabric.Underlay {
	t.Helper()
	r, err := fabric.OpenReaderAt(ns)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	u, err := r.FindUnderlay(spec)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// setupHost6 gives h an IPv6 device on the underlay stack picks, over its
// IPv6 address or, not v6Underlay, its IPv4 one (the agent's choice for an
// IPv6-only overlay on a host whose interface has a link-local IPv6
// address alone), its address and the overlay route, and a writer opened
// for it.
func setupHost6(t *testing.T, h *lab.Host, stack fabric.Stack, v6Underlay bool) *host6 {
	t.Helper()
	core, logs := observer.New(zap.DebugLevel)
	x := &host6{h: h, ns: nsOf(t, h), subnet: subnet6(h.Index), logs: logs}
	x.u = findUnderlay6(t, x.ns, fabric.UnderlaySpec{Stack: stack})
	local := x.u.Addr
	if v6Underlay {
		local = x.u.Addr6
	}
	dev, err := ensureDevice6(h, fabric.DeviceSpec{Name: fabric.DeviceName(1, true), VNI: 1, Port: 8472, Underlay: x.u, IPv6: true, Local: local}, zap.New(core))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { dev.Close() })
	x.dev = dev
	if _, err := dev.SetAddress(x.subnet.Addr()); err != nil {
		t.Fatal(err)
	}
	if _, err := dev.EnsureRoutes(x.subnet.Addr(), []fabric.Route{{Dst: overlay6}}); err != nil {
		out, _ := h.Exec("ip", "-6", "addr", "show", "dev", dev.Name)
		t.Fatalf("%v\n%s", err, out)
	}
	e, err := fabric.OpenEntriesAt(x.ns, dev.Index, dev.Name, fabric.WithIPv6(true), fabric.WithDirectRoutes(x.u.Index, overlay6))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { e.Close() })
	x.e = e
	return x
}

// vxlanOf reads the device as the kernel has it.
func vxlanOf(t *testing.T, ns netns.NsHandle, name string) *netlink.Vxlan {
	t.Helper()
	nh, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		t.Fatal(err)
	}
	defer nh.Close()
	l, err := nh.LinkByName(name)
	if err != nil {
		t.Fatal(err)
	}
	vx, ok := l.(*netlink.Vxlan)
	if !ok {
		t.Fatalf("%s is a %s", name, l.Type())
	}
	return vx
}

// readSysctl reads a file under /proc/sys/net in h's namespace.
func readSysctl(t *testing.T, h *lab.Host, path string) string {
	t.Helper()
	var v string
	err := lab.Do(h.NS, func() error {
		b, err := os.ReadFile(filepath.Join("/proc/sys/net", path))
		v = strings.TrimSpace(string(b))
		return err
	})
	if err != nil {
		t.Fatal(err)
	}
	return v
}

// TestIPv6Device: flannel-v6.<VNI> as fabric makes it, over an IPv6 and
// over an IPv4 underlay: its local address, MTU (70 bytes of overhead over
// IPv6, 50 over IPv4, or Backend.MTU less those), GBP and Learning, the
// sysctls written as files and read back, the address as a /128 with
// other addresses but the link-local one removed, the on-link overlay
// route and a host route via a gateway on-link; then adoption on restart,
// and recreation when GBP or Learning differ.
func TestIPv6Device(t *testing.T) {
	for _, tc := range []struct {
		name, lab  string
		v6Underlay bool
		stack      fabric.Stack
		mtu        int // of the device, from the underlay's 1500
		overhead   int
	}{
		{"ipv6 underlay", "vtf6dv6", true, fabric.DualStack, 1430, 70},
		{"ipv4 underlay", "vtf6dv4", false, fabric.IPv6Stack, 1450, 50},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			l := newLab(t, tc.lab)
			h := addHost6(t, l, tc.v6Underlay)
			x := setupHost6(t, h, tc.stack, tc.v6Underlay)
			name := fabric.DeviceName(1, true)
			wantLocal := h.IP
			if tc.v6Underlay {
				wantLocal = underlayAddr6(h)
			}

			if c := x.logs.FilterMessage("created VXLAN device").All(); len(c) != 1 || c[0].ContextMap()["local"] != wantLocal.String() {
				t.Errorf("creation logged as %v, want once, with local %s", c, wantLocal)
			}
			vx := vxlanOf(t, x.ns, name)
			if name != "flannel-v6.1" || x.dev.Name != name || !x.dev.IPv6 || x.dev.Local != wantLocal {
				t.Errorf("device %s (IPv6 %v, local %s), want flannel-v6.1 carrying IPv6 from %s", x.dev.Name, x.dev.IPv6, x.dev.Local, wantLocal)
			}
			if got, _ := netip.AddrFromSlice(vx.SrcAddr); got.Unmap() != wantLocal {
				t.Errorf("kernel says local %s, want %s", vx.SrcAddr, wantLocal)
			}
			if vx.MTU != tc.mtu || x.dev.MTU != tc.mtu {
				t.Errorf("MTU %d (Device says %d), want %d", vx.MTU, x.dev.MTU, tc.mtu)
			}
			if vx.Learning || vx.GBP || !vx.Proxy || !vx.L2miss || !vx.L3miss || vx.VtepDevIndex != x.u.Index {
				t.Errorf("device flags: learning %v gbp %v proxy %v l2miss %v l3miss %v underlay %d", vx.Learning, vx.GBP, vx.Proxy, vx.L2miss, vx.L3miss, vx.VtepDevIndex)
			}

			t.Run("sysctls", func(t *testing.T) {
				for path, want := range map[string]string{
					"ipv6/neigh/" + name + "/app_solicit":         "3",
					"ipv6/neigh/" + name + "/ucast_solicit":       "0",
					"ipv6/neigh/" + name + "/mcast_solicit":       "0",
					"ipv6/neigh/" + name + "/mcast_resolicit":     "0",
					"ipv6/conf/" + name + "/accept_dad":           "0",
					"ipv6/conf/" + name + "/accept_ra":            "0",
					"ipv6/conf/" + name + "/router_solicitations": "0",
					"ipv4/neigh/" + name + "/app_solicit":         "0", // untouched: the device carries no IPv4
				} {
					if got := readSysctl(t, h, path); got != want {
						t.Errorf("%s = %s, want %s", path, got, want)
					}
				}
				// The timer check reads the IPv6 neighbour table's.
				trap := func() (s string) {
					if err := lab.Do(h.NS, func() (err error) { s, err = x.dev.ProbeTimersTrap(); return err }); err != nil {
						t.Fatal(err)
					}
					return s
				}
				if s := trap(); s != "" {
					t.Errorf("default timers: %q", s)
				}
				mustExec(t, h, "sh", "-c", "echo 1000 > /proc/sys/net/ipv6/neigh/"+name+"/base_reachable_time_ms")
				if s := trap(); !strings.Contains(s, "/proc/sys/net/ipv6/neigh/"+name+"/base_reachable_time_ms=1000") {
					t.Errorf("base_reachable_time_ms=1000: %q, want the trap named", s)
				}
				mustExec(t, h, "sh", "-c", "echo 30000 > /proc/sys/net/ipv6/neigh/"+name+"/base_reachable_time_ms")
			})

			t.Run("address", func(t *testing.T) {
				out := mustExec(t, h, "ip", "-6", "-o", "addr", "show", "dev", name)
				if !strings.Contains(out, "inet6 "+x.subnet.Addr().String()+"/128 scope global") || !strings.Contains(out, "fe80::") || strings.Contains(out, "tentative") {
					t.Errorf("addresses of %s:\n%s\nwant %s/128, untentative, beside the link-local one", name, out, x.subnet.Addr())
				}
				// An earlier lease's address goes, the link-local stays.
				next := subnet6(9).Addr()
				changed, err := x.dev.SetAddress(next)
				if err != nil || !changed {
					t.Fatalf("SetAddress(%s): changed %v, %v", next, changed, err)
				}
				out = mustExec(t, h, "ip", "-6", "-o", "addr", "show", "dev", name)
				if strings.Contains(out, x.subnet.Addr().String()+"/128") || !strings.Contains(out, next.String()+"/128") || !strings.Contains(out, "fe80::") {
					t.Errorf("after SetAddress(%s):\n%s", next, out)
				}
				if changed, err := x.dev.SetAddress(next); err != nil || changed {
					t.Errorf("SetAddress again: changed %v, %v; want no change", changed, err)
				}
				if _, err := x.dev.SetAddress(netip.MustParseAddr("10.5.1.0")); err == nil {
					t.Errorf("an IPv4 address on the IPv6 device was taken")
				}
				if _, err := x.dev.SetAddress(x.subnet.Addr()); err != nil {
					t.Fatal(err)
				}
				// The kernel cleared the overlay route's source when the
				// address went (it deletes an IPv4 route in that case):
				// the route is written again.
				if line := routeLine(mustExec(t, h, "ip", "-6", "route", "show", "dev", name), overlay6); strings.Contains(line, "src") {
					t.Logf("the kernel kept the overlay route's source: %s", line)
				}
				added, err := x.dev.EnsureRoutes(x.subnet.Addr(), []fabric.Route{{Dst: overlay6}})
				line := routeLine(mustExec(t, h, "ip", "-6", "route", "show", "dev", name), overlay6)
				if err != nil || !added || !strings.Contains(line, "src "+x.subnet.Addr().String()) {
					t.Errorf("EnsureRoutes after the address came back: added %v, %v; route %q", added, err, line)
				}
			})

			t.Run("routes", func(t *testing.T) {
				src := x.subnet.Addr()
				host := fabric.Route{Dst: subnet6(7), Via: subnet6(7).Addr()}
				if err := x.e.SetRoute(host, src); err != nil {
					t.Fatal(err)
				}
				out := mustExec(t, h, "ip", "-6", "route", "show", "dev", name)
				for dst, want := range map[netip.Prefix][]string{
					overlay6:   {"src " + src.String()},
					subnet6(7): {"via " + subnet6(7).Addr().String(), "src " + src.String(), "onlink"},
				} {
					line := routeLine(out, dst)
					for _, w := range want {
						if !strings.Contains(line, w) {
							t.Errorf("routes of %s:\n%s\nwant %s with %q", name, out, dst, w)
						}
					}
				}
				routes, err := x.e.Routes()
				if err != nil {
					t.Fatal(err)
				}
				if !slices.Contains(routes, fabric.Route{Dst: overlay6}) || !slices.Contains(routes, host) {
					t.Errorf("Routes() = %v, want the overlay route and %s", routes, host)
				}
				for _, r := range routes {
					if r.Dst.Addr().Is4() || r.Dst.Addr().IsLinkLocalUnicast() {
						t.Errorf("Routes() lists %s, not a route of the IPv6 device's", r)
					}
				}
				r, err := fabric.OpenReaderAt(x.ns)
				if err != nil {
					t.Fatal(err)
				}
				defer r.Close()
				missing, err := r.CheckDevice(x.dev.Index, name, src, []netip.Prefix{overlay6, subnet6(7)})
				if err != nil || len(missing) != 0 {
					t.Errorf("CheckDevice: %v, %v; want nothing missing", missing, err)
				}
				if err := x.e.DelRoute(host); err != nil {
					t.Fatal(err)
				}
				missing, err = r.CheckDevice(x.dev.Index, name, subnet6(8).Addr(), []netip.Prefix{overlay6, subnet6(7)})
				if err != nil || len(missing) != 2 || !strings.Contains(strings.Join(missing, ";"), subnet6(8).Addr().String()+"/128 missing") {
					t.Errorf("CheckDevice after the host route went, for another address: %v, %v; want the address and the route missing", missing, err)
				}
				if err := x.e.SetRoute(fabric.Route{Dst: netip.MustParsePrefix("10.5.7.0/24")}, netip.Addr{}); err == nil {
					t.Errorf("an IPv4 route through the IPv6 device's writer was taken")
				}
			})

			t.Run("adoption", func(t *testing.T) {
				spec := fabric.DeviceSpec{Name: name, VNI: 1, Port: 8472, Underlay: x.u, IPv6: true, Local: wantLocal}
				core, logs := observer.New(zap.InfoLevel)
				again, err := ensureDevice6(h, spec, zap.New(core))
				if err != nil {
					t.Fatal(err)
				}
				defer again.Close()
				if again.Index != x.dev.Index || logs.FilterMessage("adopted existing VXLAN device").Len() != 1 {
					t.Errorf("restart: index %d (was %d), logs %v; want the device adopted", again.Index, x.dev.Index, logs.All())
				}
				// Backend.MTU: corrected in place.
				spec.MTU = 1400
				smaller, err := ensureDevice6(h, spec, zap.New(core))
				if err != nil {
					t.Fatal(err)
				}
				defer smaller.Close()
				overhead := tc.overhead
				if vx := vxlanOf(t, x.ns, name); smaller.Index != x.dev.Index || vx.MTU != 1400-overhead || smaller.MTU != 1400-overhead {
					t.Errorf("Backend.MTU 1400: index %d (was %d), MTU %d, want the device kept at %d", smaller.Index, x.dev.Index, vx.MTU, 1400-overhead)
				}
				// Larger than the underlay: the kernel refuses, and the
				// error says which setting.
				spec.MTU = 9000
				if _, err := ensureDevice6(h, spec, zap.New(core)); err == nil || !strings.Contains(err.Error(), "Backend.MTU") {
					t.Errorf("Backend.MTU 9000 over a 1500 underlay: %v; want an error naming Backend.MTU", err)
				}
				// Too small for IPv6.
				spec.MTU = 1280
				if _, err := ensureDevice6(h, spec, zap.New(core)); err == nil || !strings.Contains(err.Error(), "Backend.MTU 1280") || !strings.Contains(err.Error(), "1280 an IPv6 link needs") {
					t.Errorf("Backend.MTU 1280: %v; want an error saying the IPv6 minimum", err)
				}
				spec.MTU = 0

				// GBP and Learning: honoured, and a device without them is
				// recreated, keeping its MAC.
				spec.GBP, spec.Learning = true, true
				core, logs = observer.New(zap.InfoLevel)
				gbp, err := ensureDevice6(h, spec, zap.New(core))
				if err != nil {
					t.Fatal(err)
				}
				defer gbp.Close()
				vx := vxlanOf(t, x.ns, name)
				if !vx.GBP || !vx.Learning || vx.HardwareAddr.String() != x.dev.MAC.String() || vx.MTU != tc.mtu {
					t.Errorf("with GBP and Learning: gbp %v learning %v MAC %s (was %s) MTU %d", vx.GBP, vx.Learning, vx.HardwareAddr, x.dev.MAC, vx.MTU)
				}
				warns := logs.FilterMessage("existing device is incompatible; recreating it").All()
				if len(warns) != 1 {
					t.Fatalf("%d warnings about the incompatible device, want 1", len(warns))
				}
				diffs := fmt.Sprint(warns[0].ContextMap()["differences"])
				for _, want := range []string{"gbp false, want true", "learning false, want true"} {
					if !strings.Contains(diffs, want) {
						t.Errorf("differences %s do not say %q", diffs, want)
					}
				}
				if got := readSysctl(t, h, "ipv6/conf/"+name+"/accept_dad"); got != "0" {
					t.Errorf("recreated device: accept_dad %s, want 0", got)
				}
			})
		})
	}
}

// TestIPv6DeviceRefusals: what the kernel or fabric refuses is said, with
// the setting to blame.
func TestIPv6DeviceRefusals(t *testing.T) {
	t.Parallel()
	l := newLab(t, "vtf6ref")
	h := addHost6(t, l, false)
	ns := nsOf(t, h)
	u := findUnderlay6(t, ns, fabric.UnderlaySpec{Stack: fabric.IPv6Stack})
	log := zap.NewNop()

	// The kernel takes one VXLAN device per VNI, port and local IPv4
	// address: an IPv6 device over the IPv4 underlay cannot sit beside
	// the IPv4 device.
	v4, err := ensureDevice6(h, fabric.DeviceSpec{Name: fabric.DeviceName(1, false), VNI: 1, Underlay: u}, log)
	if err != nil {
		t.Fatal(err)
	}
	defer v4.Close()
	_, err = ensureDevice6(h, fabric.DeviceSpec{Name: fabric.DeviceName(1, true), VNI: 1, Underlay: u, IPv6: true, Local: u.Addr}, log)
	if err == nil || !errors.Is(err, unix.EEXIST) || !strings.Contains(err.Error(), "flannel.1 already has VNI 1") {
		t.Errorf("an IPv6 device over IPv4 beside flannel.1: %v; want an error naming flannel.1", err)
	}
	// Without an IPv6 underlay address and no Local, there is nothing to
	// send from. (eth0's link-local address would count, as it does for
	// flannel: the underlay here has none at all.)
	noV6 := u
	noV6.Addr6 = netip.Addr{}
	_, err = ensureDevice6(h, fabric.DeviceSpec{Name: fabric.DeviceName(2, true), VNI: 2, Underlay: noV6, IPv6: true}, log)
	if err == nil || !strings.Contains(err.Error(), "no IPv6 address") {
		t.Errorf("IPv6 device with no IPv6 underlay address: %v", err)
	}
	// A VNI whose name does not fit IFNAMSIZ.
	_, err = ensureDevice6(h, fabric.DeviceSpec{Name: fabric.DeviceName(16777215, true), VNI: 16777215, Underlay: u, IPv6: true, Local: u.Addr}, log)
	if err == nil || !strings.Contains(err.Error(), "longer than the kernel's 15 bytes") {
		t.Errorf("flannel-v6.16777215: %v", err)
	}
}

// missListener is the least of a miss listener, to test fabric's writes
// without package miss: it hears RTM_GETNEIGH on the neighbour group in a
// namespace and hands each L3 miss (an NDA_DST) to a channel.
type missListener struct {
	fd     int
	misses chan netip.Addr
	l2     chan net.HardwareAddr
}

func listenMisses(t *testing.T, nsName string) *missListener {
	t.Helper()
	m := &missListener{fd: -1, misses: make(chan netip.Addr, 64), l2: make(chan net.HardwareAddr, 64)}
	err := lab.Do(nsName, func() error {
		fd, err := unix.Socket(unix.AF_NETLINK, unix.SOCK_RAW|unix.SOCK_CLOEXEC, unix.NETLINK_ROUTE)
		if err != nil {
			return err
		}
		m.fd = fd
		return unix.Bind(fd, &unix.SockaddrNetlink{Family: unix.AF_NETLINK, Groups: 1 << (unix.RTNLGRP_NEIGH - 1)})
	})
	if err != nil {
		if m.fd >= 0 {
			unix.Close(m.fd)
		}
		t.Fatal(err)
	}
	tv := unix.NsecToTimeval(int64(100 * time.Millisecond))
	if err := unix.SetsockoptTimeval(m.fd, unix.SOL_SOCKET, unix.SO_RCVTIMEO, &tv); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() {
		defer close(done)
		m.run(ctx)
	}()
	t.Cleanup(func() {
		cancel()
		<-done
		unix.Close(m.fd)
	})
	return m
}

func (m *missListener) run(ctx context.Context) {
	buf := make([]byte, 64<<10)
	for ctx.Err() == nil {
		n, from, err := unix.Recvfrom(m.fd, buf, 0)
		if err != nil {
			continue // timeout (to look at ctx), or an overflow: the test polls
		}
		if sa, ok := from.(*unix.SockaddrNetlink); !ok || sa.Pid != 0 {
			continue
		}
		msgs, err := syscall.ParseNetlinkMessage(buf[:n])
		if err != nil {
			continue
		}
		for _, msg := range msgs {
			if msg.Header.Type != unix.RTM_GETNEIGH || len(msg.Data) < 12 {
				continue
			}
			var dst netip.Addr
			var lladdr net.HardwareAddr
			for b := msg.Data[12:]; len(b) >= 4; {
				l := int(binary.NativeEndian.Uint16(b[0:2]))
				if l < 4 || l > len(b) {
					break
				}
				switch binary.NativeEndian.Uint16(b[2:4]) & 0x3fff {
				case unix.NDA_DST:
					dst, _ = netip.AddrFromSlice(b[4:l])
				case unix.NDA_LLADDR:
					lladdr = append(net.HardwareAddr(nil), b[4:l]...)
				}
				b = b[min((l+3)&^3, len(b)):]
			}
			switch {
			case dst.IsValid():
				select {
				case m.misses <- dst.Unmap():
				default:
				}
			case lladdr != nil:
				select {
				case m.l2 <- lladdr:
				default:
				}
			}
		}
	}
}

// next waits for an L3 miss for want.
func (m *missListener) next(want netip.Addr, within time.Duration) error {
	deadline := time.After(within)
	for {
		select {
		case a := <-m.misses:
			if a == want {
				return nil
			}
		case <-deadline:
			return fmt.Errorf("no miss for %s within %s", want, within)
		}
	}
}

// pairOverlay6 is two hosts with IPv6 devices; b has a "container"
// address, target, on its loopback, and knows its way back to a (its
// entries for a are written up front), so that only a's miss is asked.
type pairOverlay6 struct {
	a, b   *host6
	target netip.Addr
	// underlay addresses the FDB entries point at
	aDst, bDst netip.Addr
}

func newPair6(t *testing.T, name string, v6Underlay bool) *pairOverlay6 {
	t.Helper()
	l := newLab(t, name)
	stack := fabric.IPv6Stack
	if v6Underlay {
		stack = fabric.DualStack
	}
	p := &pairOverlay6{}
	p.a = setupHost6(t, addHost6(t, l, v6Underlay), stack, v6Underlay)
	p.b = setupHost6(t, addHost6(t, l, v6Underlay), stack, v6Underlay)
	p.aDst, p.bDst = p.a.dev.Local, p.b.dev.Local
	p.target = p.b.subnet.Addr().Next().Next().Next().Next().Next() // fd00:10:0:2::5
	mustExec(t, p.b.h, "ip", "addr", "add", p.target.String()+"/128", "dev", "lo")
	fdbErr, neighErr := p.b.e.SetFDBAndNeigh([6]byte(p.a.dev.MAC), p.aDst, p.a.subnet.Addr(), true)
	if fdbErr != nil || neighErr != nil {
		t.Fatal(fdbErr, neighErr)
	}
	return p
}

// TestIPv6MissAnsweredInOneDatagram: a ping over the IPv6 overlay to an
// address a has never heard of misses (an AF_INET6 app probe, as
// kernel-notes.md says); answered with SetFDBAndNeigh, the FDB entry and
// the neighbour entry in one datagram, the first echo, queued on the
// INCOMPLETE entry, is delivered: the kernel applied the FDB entry first.
// The control, the neighbour written before the FDB entry, loses it.
// Over an IPv6 and an IPv4 underlay.
func TestIPv6MissAnsweredInOneDatagram(t *testing.T) {
	for _, tc := range []struct {
		name       string
		lab        string
		v6Underlay bool
	}{
		{"ipv6 underlay", "vtf6m6", true},
		{"ipv4 underlay", "vtf6m4", false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			p := newPair6(t, tc.lab, tc.v6Underlay)
			misses := listenMisses(t, p.a.h.NS)
			bMAC := [6]byte(p.b.dev.MAC)
			ping := func(addr netip.Addr) (<-chan lab.PingResult, <-chan error) {
				res, errc := make(chan lab.PingResult, 1), make(chan error, 1)
				go func() {
					// One echo, waited for three seconds: received, it was
					// the queued first packet (the kernel's app probes
					// would have given up after three).
					out, err := p.a.h.Exec("ping", "-6", "-n", "-c1", "-W3", addr.String())
					r, perr := lab.ParsePing(out)
					if perr != nil {
						errc <- fmt.Errorf("%v: %v", err, perr)
						return
					}
					res <- r
				}()
				return res, errc
			}

			t.Run("FDB and neighbour in one datagram", func(t *testing.T) {
				res, errc := ping(p.target)
				if err := misses.next(p.target, 3*time.Second); err != nil {
					out, _ := p.a.h.Exec("sh", "-c", "ip -6 route; ip -6 neigh show dev flannel-v6.1; ip -6 addr")
					select {
					case r := <-res:
						out += r.Output
					case err := <-errc:
						out += err.Error()
					}
					t.Fatalf("%v\n%s", err, out)
				}
				fdbErr, neighErr := p.a.e.SetFDBAndNeigh(bMAC, p.bDst, p.target, false)
				if fdbErr != nil || neighErr != nil {
					t.Fatalf("SetFDBAndNeigh: fdb %v, neighbour %v", fdbErr, neighErr)
				}
				select {
				case r := <-res:
					if r.Received != 1 {
						t.Fatalf("the first echo was lost:\n%s", r.Output)
					}
					t.Logf("first echo answered in %v", r.RTTs)
				case err := <-errc:
					t.Fatal(err)
				}
				n := neighbour(t, p.a.e, p.target)
				if n == nil || n.State&(unix.NUD_REACHABLE|unix.NUD_STALE|unix.NUD_DELAY|unix.NUD_PROBE) == 0 || n.MAC.String() != p.b.dev.MAC.String() {
					t.Errorf("neighbour entry %+v, want %s→%s, answered", n, p.target, p.b.dev.MAC)
				}
				fdb, err := p.a.e.FDB()
				if err != nil {
					t.Fatal(err)
				}
				if !slices.ContainsFunc(fdb, func(f fabric.FDBEntry) bool {
					return f.MAC.String() == p.b.dev.MAC.String() && f.Dst == p.bDst && f.State&unix.NUD_PERMANENT != 0
				}) {
					t.Errorf("FDB %v, want %s→%s permanent", fdb, p.b.dev.MAC, p.bDst)
				}
				if st := p.a.e.Stats(fabric.OpSetFDB); st.Writes < 1 || st.Errors != 0 {
					t.Errorf("FDB write stats %+v", st)
				}
			})

			t.Run("control: neighbour first loses the packet", func(t *testing.T) {
				// Another address of b, with b's FDB entry gone first.
				other := p.target.Next()
				mustExec(t, p.b.h, "ip", "addr", "add", other.String()+"/128", "dev", "lo")
				if err := p.a.e.DelFDB(net.HardwareAddr(bMAC[:]), p.bDst); err != nil {
					t.Fatal(err)
				}
				res, errc := ping(other)
				if err := misses.next(other, 3*time.Second); err != nil {
					t.Fatal(err)
				}
				if err := p.a.e.SetNeigh(other, bMAC, false); err != nil {
					t.Fatal(err)
				}
				if err := p.a.e.SetFDB(bMAC, p.bDst); err != nil {
					t.Fatal(err)
				}
				select {
				case r := <-res:
					if r.Received != 0 {
						t.Errorf("neighbour before FDB delivered the queued echo; the test shows nothing about the order:\n%s", r.Output)
					}
				case err := <-errc:
					t.Fatal(err)
				}
				select {
				case mac := <-misses.l2:
					if mac.String() != p.b.dev.MAC.String() {
						t.Errorf("L2 miss for %s, want %s", mac, p.b.dev.MAC)
					}
				case <-time.After(2 * time.Second):
					t.Errorf("no L2 miss for the dropped echo")
				}
			})

			t.Run("each write's failure is its own", func(t *testing.T) {
				// An FDB destination of the other family than the
				// underlay's: the kernel refuses the FDB entry and takes
				// the neighbour.
				wrong := netip.MustParseAddr("198.51.100.99")
				if !tc.v6Underlay {
					wrong = netip.MustParseAddr("2001:db8:5::99")
				}
				ip := subnet6(3).Addr().Next()
				fdbErr, neighErr := p.a.e.SetFDBAndNeigh([6]byte{0x02, 0, 0, 0, 0, 3}, wrong, ip, true)
				if !errors.Is(fdbErr, unix.EAFNOSUPPORT) || !strings.Contains(fdbErr.Error(), "set fdb 02:00:00:00:00:03→"+wrong.String()) || neighErr != nil {
					t.Errorf("FDB to %s: fdb error %v, neighbour error %v; want the FDB write refused alone", wrong, fdbErr, neighErr)
				}
				if n := neighbour(t, p.a.e, ip); n == nil || n.State&unix.NUD_PERMANENT == 0 {
					t.Errorf("the neighbour write of the pair was not applied: %+v", n)
				}
				// The neighbour refused (IPv6 off on the device), the FDB
				// entry taken.
				path := "/proc/sys/net/ipv6/conf/" + p.a.dev.Name + "/disable_ipv6"
				mustExec(t, p.a.h, "sh", "-c", "echo 1 > "+path)
				defer mustExec(t, p.a.h, "sh", "-c", "echo 0 > "+path)
				mac := [6]byte{0x02, 0, 0, 0, 0, 4}
				fdbErr, neighErr = p.a.e.SetFDBAndNeigh(mac, p.bDst, ip.Next(), true)
				if fdbErr != nil || neighErr == nil || !strings.Contains(neighErr.Error(), "set neighbour "+ip.Next().String()) {
					t.Errorf("neighbour on a device with IPv6 off: fdb error %v, neighbour error %v; want the neighbour write refused alone", fdbErr, neighErr)
				}
				t.Logf("the kernel's refusal of the neighbour: %v", neighErr)
				fdb, err := p.a.e.FDB()
				if err != nil {
					t.Fatal(err)
				}
				if !slices.ContainsFunc(fdb, func(f fabric.FDBEntry) bool { return [6]byte(f.MAC) == mac && f.Dst == p.bDst }) {
					t.Errorf("the FDB write of the pair was not applied: %v", fdb)
				}
				// Invalid input: neither is sent.
				fdbErr, neighErr = p.a.e.SetFDBAndNeigh(mac, p.bDst, netip.MustParseAddr("10.5.3.1"), true)
				if fdbErr == nil || neighErr == nil || !strings.Contains(neighErr.Error(), "not an IPv6 address") {
					t.Errorf("an IPv4 neighbour on the IPv6 device: %v, %v", fdbErr, neighErr)
				}
			})
		})
	}
}

// routeLine returns the line of `ip route show` output for dst.
func routeLine(out string, dst netip.Prefix) string {
	for _, l := range strings.Split(out, "\n") {
		if strings.HasPrefix(l, dst.String()+" ") {
			return l
		}
	}
	return ""
}

// neighbour returns e's entry for ip, or nil.
func neighbour(t *testing.T, e *fabric.Entries, ip netip.Addr) *fabric.Neighbour {
	t.Helper()
	ns, err := e.Neighbours()
	if err != nil {
		t.Fatal(err)
	}
	for _, n := range ns {
		if n.IP == ip {
			return &n
		}
	}
	return nil
}

// TestIPv6Dumps: the IPv6 device's writer lists its IPv6 neighbours (the
// kernel's multicast ones left out) and FDB entries towards the underlay's
// family, never the IPv4 entries of the device; a Reader lists both
// families; the IPv4 device's writer lists no IPv6 entry.
func TestIPv6Dumps(t *testing.T) {
	t.Parallel()
	l := newLab(t, "vtf6dump")
	h := addHost6(t, l, true)
	x := setupHost6(t, h, fabric.DualStack, true)
	mac := [6]byte{0x02, 0xaa, 0, 0, 0, 1}
	ips := []netip.Addr{subnet6(3).Addr(), subnet6(3).Addr().Next(), subnet6(4).Addr()}
	writes := make([]fabric.NeighWrite, len(ips))
	for i, ip := range ips {
		writes[i] = fabric.NeighWrite{IP: ip, MAC: mac, Permanent: i%2 == 0}
	}
	if n, err := x.e.SetNeighs(writes); n != len(writes) || err != nil {
		t.Fatalf("SetNeighs: %d, %v", n, err)
	}
	dst6 := netip.MustParseAddr("2001:db8:5::33")
	if err := x.e.SetFDB(mac, dst6); err != nil {
		t.Fatal(err)
	}
	// An ARP entry on the IPv6 device, for the families to be told apart,
	// and a multicast mapping as the kernel makes them.
	mustExec(t, h, "ip", "neigh", "replace", "10.5.3.1", "lladdr", "02:aa:00:00:00:02", "dev", x.dev.Name, "nud", "permanent")
	mustExec(t, h, "ip", "-6", "neigh", "replace", "ff02::99", "lladdr", "33:33:00:00:00:99", "dev", x.dev.Name, "nud", "noarp")

	ns, err := x.e.Neighbours()
	if err != nil {
		t.Fatal(err)
	}
	var got []netip.Addr
	for _, n := range ns {
		got = append(got, n.IP)
		if n.IP.IsMulticast() || n.IP.Is4() {
			t.Errorf("the IPv6 writer lists %s", n.IP)
		}
	}
	for i, ip := range ips {
		n := neighbour(t, x.e, ip)
		want := unix.NUD_REACHABLE
		if writes[i].Permanent {
			want = unix.NUD_PERMANENT
		}
		if n == nil || n.State != want || [6]byte(n.MAC) != mac {
			t.Errorf("neighbour %s: %+v, want state %#x lladdr %s (all: %v)", ip, n, want, net.HardwareAddr(mac[:]), got)
		}
	}
	if out := mustExec(t, h, "ip", "-6", "neigh", "show", "dev", x.dev.Name, "nud", "noarp"); !strings.Contains(out, "ff02::99") {
		t.Fatalf("no multicast entry on the device to leave out: %q", out)
	}
	fdb, err := x.e.FDB()
	if err != nil {
		t.Fatal(err)
	}
	if len(fdb) != 1 || fdb[0].Dst != dst6 || [6]byte(fdb[0].MAC) != mac || fdb[0].State&unix.NUD_PERMANENT == 0 {
		t.Errorf("FDB %+v, want one entry %s→%s", fdb, net.HardwareAddr(mac[:]), dst6)
	}

	r, err := fabric.OpenReaderAt(x.ns)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	all, err := r.Neighbours(x.dev.Index)
	if err != nil {
		t.Fatal(err)
	}
	has := func(ns []fabric.Neighbour, ip netip.Addr) bool {
		return slices.ContainsFunc(ns, func(n fabric.Neighbour) bool { return n.IP == ip })
	}
	if !has(all, netip.MustParseAddr("10.5.3.1")) || !has(all, ips[0]) || slices.ContainsFunc(all, func(n fabric.Neighbour) bool { return n.IP.IsMulticast() && n.IP.Is6() }) {
		t.Errorf("Reader.Neighbours = %v, want both families, no IPv6 multicast", all)
	}
	rf, err := r.FDB(x.dev.Index)
	if err != nil || len(rf) != 1 || rf[0].Dst != dst6 {
		t.Errorf("Reader.FDB = %v, %v", rf, err)
	}

	// The IPv4 writer of the same device: IPv4 entries only.
	e4, err := fabric.OpenEntriesAt(x.ns, x.dev.Index, x.dev.Name)
	if err != nil {
		t.Fatal(err)
	}
	defer e4.Close()
	ns4, err := e4.Neighbours()
	if err != nil || len(ns4) != 1 || ns4[0].IP != netip.MustParseAddr("10.5.3.1") {
		t.Errorf("an IPv4 writer's Neighbours = %v, %v; want the ARP entry alone", ns4, err)
	}
	if err := e4.SetNeigh(ips[0], mac, true); err == nil || !strings.Contains(err.Error(), "not an IPv4 address") {
		t.Errorf("an IPv6 neighbour through an IPv4 writer: %v", err)
	}

	// Deletes, by family.
	if err := x.e.DelNeigh(ips[0]); err != nil {
		t.Fatal(err)
	}
	if err := x.e.DelNeigh(ips[0]); err != nil {
		t.Errorf("deleting a missing entry: %v", err)
	}
	if err := x.e.DelFDB(net.HardwareAddr(mac[:]), dst6); err != nil {
		t.Fatal(err)
	}
	if n := neighbour(t, x.e, ips[0]); n != nil {
		t.Errorf("%s still there: %+v", ips[0], n)
	}
	if fdb, _ := x.e.FDB(); len(fdb) != 0 {
		t.Errorf("FDB after delete: %v", fdb)
	}
}

// TestDirectRoutes: DirectRouting routes (Route.Direct) go on the underlay
// device, via the peer's public IP, without onlink; the writer lists them
// beside the device's own (and lists flanneld's, written without a
// device), never the underlay's other routes; traffic takes them, not the
// VXLAN device; and they go when deleted. IPv6 over the IPv6 underlay, and
// IPv4.
func TestDirectRoutes(t *testing.T) {
	t.Parallel()
	l := newLab(t, "vtf6dir")
	h1, h2 := addHost6(t, l, true), addHost6(t, l, true)
	a := setupHost6(t, h1, fabric.DualStack, true)
	if !a.u.Reaches(underlayAddr6(h2)) || !a.u.Reaches(h2.IP) {
		t.Fatalf("underlay %+v: h2's addresses not on its segment", a.u)
	}
	// h2 holds an overlay address of each family on its loopback; it
	// answers over the underlay by its connected routes.
	target6 := subnet6(2).Addr().Next()
	target4 := netip.MustParseAddr("10.5.2.1")
	mustExec(t, h2, "ip", "addr", "add", target6.String()+"/128", "dev", "lo")
	mustExec(t, h2, "ip", "addr", "add", target4.String()+"/32", "dev", "lo")
	overlay4 := netip.MustParsePrefix("10.5.0.0/16")

	e4, err := fabric.OpenEntriesAt(a.ns, a.dev.Index, a.dev.Name, fabric.WithDirectRoutes(a.u.Index, overlay4))
	if err != nil {
		t.Fatal(err)
	}
	defer e4.Close()
	for _, tc := range []struct {
		name   string
		e      *fabric.Entries
		route  fabric.Route
		target netip.Addr
		ipFlag string
		// flanneld's, written without a device
		flanneld fabric.Route
	}{
		{"ipv6", a.e, fabric.Route{Dst: subnet6(2), Via: underlayAddr6(h2), Direct: true}, target6, "-6",
			fabric.Route{Dst: subnet6(4), Via: underlayAddr6(h2), Direct: true}},
		{"ipv4", e4, fabric.Route{Dst: netip.MustParsePrefix("10.5.2.0/24"), Via: h2.IP, Direct: true}, target4, "-4",
			fabric.Route{Dst: netip.MustParsePrefix("10.5.4.0/24"), Via: h2.IP, Direct: true}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			if out, err := h1.Exec("ping", tc.ipFlag, "-n", "-c1", "-W1", tc.target.String()); err == nil {
				t.Fatalf("%s answered before the direct route existed:\n%s", tc.target, out)
			}
			if err := tc.e.SetRoute(tc.route, a.subnet.Addr()); err != nil {
				t.Fatal(err)
			}
			out := mustExec(t, h1, "ip", tc.ipFlag, "route", "show", "dev", "eth0")
			if line := routeLine(out, tc.route.Dst); !strings.Contains(line, "via "+tc.route.Via.String()) || strings.Contains(line, "onlink") {
				t.Errorf("routes of eth0:\n%s\nwant %s via %s, not onlink", out, tc.route.Dst, tc.route.Via)
			}
			if out, err := h1.Exec("ping", tc.ipFlag, "-n", "-c1", "-W2", tc.target.String()); err != nil {
				t.Errorf("%s over the direct route: %v\n%s", tc.target, err, out)
			}
			mustExec(t, h1, "ip", "route", "add", tc.flanneld.Dst.String(), "via", tc.flanneld.Via.String())
			mustExec(t, h1, "ip", "route", "add", "203.0.113.0/24", "via", h2.IP.String())
			mustExec(t, h1, "ip", "-6", "route", "add", "2001:db8:77::/64", "via", underlayAddr6(h2).String())
			routes, err := tc.e.Routes()
			if err != nil {
				t.Fatal(err)
			}
			var direct []fabric.Route
			for _, r := range routes {
				if r.Direct {
					direct = append(direct, r)
				}
			}
			if len(direct) != 2 || !slices.Contains(direct, tc.route) || !slices.Contains(direct, tc.flanneld) {
				t.Errorf("Routes() direct ones = %v, want %s and flanneld's %s alone", direct, tc.route, tc.flanneld)
			}
			r, err := fabric.OpenReaderAt(a.ns)
			if err != nil {
				t.Fatal(err)
			}
			defer r.Close()
			if rd, err := r.DirectRoutes(a.u.Index, overlay4, overlay6); err != nil || !slices.Contains(rd, tc.route) || !slices.Contains(rd, tc.flanneld) {
				t.Errorf("Reader.DirectRoutes = %v, %v", rd, err)
			}
			for _, rt := range []fabric.Route{tc.route, tc.flanneld} {
				if err := tc.e.DelRoute(rt); err != nil {
					t.Fatal(err)
				}
				if err := tc.e.DelRoute(rt); err != nil {
					t.Errorf("deleting %s again: %v", rt, err)
				}
			}
			if out := mustExec(t, h1, "ip", tc.ipFlag, "route", "show", "dev", "eth0"); strings.Contains(out, tc.route.Dst.String()) || strings.Contains(out, tc.flanneld.Dst.String()) {
				t.Errorf("after DelRoute:\n%s", out)
			}
			mustExec(t, h1, "ip", "route", "del", "203.0.113.0/24")
			mustExec(t, h1, "ip", "-6", "route", "del", "2001:db8:77::/64")
		})
	}

	// A direct route needs the writer to know the underlay, and a gateway
	// of its family.
	plain, err := fabric.OpenEntriesAt(a.ns, a.dev.Index, a.dev.Name, fabric.WithIPv6(true))
	if err != nil {
		t.Fatal(err)
	}
	defer plain.Close()
	if err := plain.SetRoute(fabric.Route{Dst: subnet6(2), Via: underlayAddr6(h2), Direct: true}, netip.Addr{}); err == nil || !strings.Contains(err.Error(), "WithDirectRoutes") {
		t.Errorf("a direct route without the underlay: %v", err)
	}
	if err := a.e.SetRoute(fabric.Route{Dst: subnet6(2), Via: h2.IP, Direct: true}, netip.Addr{}); err == nil || !strings.Contains(err.Error(), "family") {
		t.Errorf("an IPv6 direct route via an IPv4 address: %v", err)
	}
}
