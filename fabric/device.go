package fabric

import (
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"go.uber.org/zap"
	"golang.org/x/sys/unix"
)

// VXLANOverhead is what encapsulation costs per packet over IPv4: outer IP
// (20), UDP (8), VXLAN (8) and inner Ethernet (14) headers.
const VXLANOverhead = 50

// DeviceSpec is the VXLAN device vtepd wants.
type DeviceSpec struct {
	Name     string
	VNI      int
	Port     int
	Underlay Underlay
	// MAC is used when the device has to be created. Passing the MAC this
	// host published before keeps every peer's entries right across a
	// reboot or a recreated device.
	MAC net.HardwareAddr
}

// Device is the VXLAN device misses come from.
type Device struct {
	Name  string
	Index int
	MAC   net.HardwareAddr
	MTU   int

	h   *netlink.Handle
	log *zap.Logger
}

// EnsureDevice makes the device match spec, in the calling thread's network
// namespace. A compatible device is adopted as it is, without being brought
// down, so that a restart costs no traffic; only its MTU is corrected. An
// incompatible one is deleted and created again, with a warning that names
// every difference. The Device owns an rtnetlink socket: Close it.
func EnsureDevice(spec DeviceSpec, log *zap.Logger) (*Device, error) {
	h, err := openHandle(netns.None())
	if err != nil {
		return nil, err
	}
	d, err := ensureDevice(h, spec, log)
	if err != nil {
		h.Close()
		return nil, err
	}
	return d, nil
}

func ensureDevice(h *netlink.Handle, spec DeviceSpec, log *zap.Logger) (*Device, error) {
	want := &netlink.Vxlan{
		LinkAttrs: netlink.LinkAttrs{
			Name:         spec.Name,
			MTU:          spec.Underlay.MTU - VXLANOverhead,
			HardwareAddr: spec.MAC,
		},
		VxlanId:      spec.VNI,
		VtepDevIndex: spec.Underlay.Index,
		SrcAddr:      net.IP(spec.Underlay.Addr.AsSlice()),
		Port:         spec.Port,
		Learning:     false,
		Proxy:        true,
		L2miss:       true,
		L3miss:       true,
	}

	link, err := h.LinkByName(spec.Name)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		link, err = createDevice(h, want)
		if err != nil {
			return nil, err
		}
		log.Info("created VXLAN device", zap.String("device", spec.Name), zap.Int("vni", spec.VNI), zap.Int("port", spec.Port),
			zap.Stringer("local", spec.Underlay.Addr), zap.String("underlay", spec.Underlay.Name), zap.Stringer("mac", link.Attrs().HardwareAddr))
	case err != nil:
		return nil, fmt.Errorf("fabric: look up %s: %w", spec.Name, err)
	default:
		if diffs := incompatibilities(link, want); len(diffs) > 0 {
			log.Warn("existing device is incompatible; recreating it", zap.String("device", spec.Name), zap.Strings("differences", diffs))
			if want.HardwareAddr == nil {
				want.HardwareAddr = link.Attrs().HardwareAddr
			}
			if err := h.LinkDel(link); err != nil {
				return nil, fmt.Errorf("fabric: delete incompatible %s: %w", spec.Name, err)
			}
			if link, err = createDevice(h, want); err != nil {
				return nil, err
			}
		} else {
			log.Info("adopted existing VXLAN device", zap.String("device", spec.Name), zap.Stringer("mac", link.Attrs().HardwareAddr))
		}
	}

	if link.Attrs().MTU != want.MTU {
		if err := h.LinkSetMTU(link, want.MTU); err != nil {
			return nil, fmt.Errorf("fabric: set MTU of %s to %d: %w", spec.Name, want.MTU, err)
		}
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		if err := h.LinkSetUp(link); err != nil {
			return nil, fmt.Errorf("fabric: set %s up: %w", spec.Name, err)
		}
	}
	return &Device{
		Name:  spec.Name,
		Index: link.Attrs().Index,
		MAC:   link.Attrs().HardwareAddr,
		MTU:   want.MTU,
		h:     h,
		log:   log,
	}, nil
}

func createDevice(h *netlink.Handle, want *netlink.Vxlan) (netlink.Link, error) {
	if err := h.LinkAdd(want); err != nil {
		return nil, fmt.Errorf("fabric: create VXLAN device %s (vni %d, port %d, local %s): %w",
			want.Name, want.VxlanId, want.Port, want.SrcAddr, err)
	}
	link, err := h.LinkByName(want.Name)
	if err != nil {
		return nil, fmt.Errorf("fabric: look up new device %s: %w", want.Name, err)
	}
	return link, nil
}

// incompatibilities lists why an existing link cannot be adopted.
func incompatibilities(link netlink.Link, want *netlink.Vxlan) []string {
	have, ok := link.(*netlink.Vxlan)
	if !ok {
		return []string{fmt.Sprintf("type %s, want vxlan", link.Type())}
	}
	var d []string
	differ := func(what string, have, want any) {
		d = append(d, fmt.Sprintf("%s %v, want %v", what, have, want))
	}
	if have.VxlanId != want.VxlanId {
		differ("vni", have.VxlanId, want.VxlanId)
	}
	if have.Port != want.Port {
		differ("port", have.Port, want.Port)
	}
	if !have.SrcAddr.Equal(want.SrcAddr) {
		differ("local", have.SrcAddr, want.SrcAddr)
	}
	if have.VtepDevIndex != want.VtepDevIndex {
		differ("underlay ifindex", have.VtepDevIndex, want.VtepDevIndex)
	}
	if have.Group != nil && !have.Group.IsUnspecified() {
		differ("remote/group", have.Group, "none")
	}
	for _, f := range []struct {
		name       string
		have, want bool
	}{
		{"learning", have.Learning, want.Learning},
		{"proxy", have.Proxy, want.Proxy},
		{"l2miss", have.L2miss, want.L2miss},
		{"l3miss", have.L3miss, want.L3miss},
		{"external", have.FlowBased, false},
	} {
		if f.have != f.want {
			differ(f.name, f.have, f.want)
		}
	}
	// A different MAC is not a reason to recreate: the lease follows the
	// device's MAC, and flapping the device would cost traffic.
	return d
}

// Close releases the device's socket; the device stays.
func (d *Device) Close() error {
	d.h.Close()
	return nil
}

// Up reports whether the device is administratively up.
func (d *Device) Up() (bool, error) {
	link, err := d.h.LinkByIndex(d.Index)
	if err != nil {
		return false, fmt.Errorf("fabric: look up %s: %w", d.Name, err)
	}
	return link.Attrs().Flags&net.FlagUp != 0, nil
}

// Sysctls under net.ipv4.neigh.<device> that make the miss path work.
var probeSysctls = []struct{ name, value string }{
	// Ask user space about every unresolved address, three times one
	// retrans_time apart, before giving up on it.
	{"app_solicit", "3"},
	// With proxy, unicast and multicast ARP into the device is answered
	// from (or dropped by) the device itself: such probes only delay the
	// application probe of an aged entry, and the FAILED state.
	{"ucast_solicit", "0"},
	{"mcast_solicit", "0"},
	{"mcast_resolicit", "0"},
}

// EnableAppProbes sets the device's neighbour sysctls so that both new
// (INCOMPLETE) and aged (PROBE) entries are resolved by asking user space.
// It writes /proc/sys of the calling thread's network namespace.
func (d *Device) EnableAppProbes() error {
	dir := filepath.Join("/proc/sys/net/ipv4/neigh", d.Name)
	for _, s := range probeSysctls {
		p := filepath.Join(dir, s.name)
		if cur, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(cur)) == s.value {
			continue
		}
		if err := os.WriteFile(p, []byte(s.value), 0o644); err != nil {
			return fmt.Errorf("fabric: set net.ipv4.neigh.%s.%s=%s: %w", d.Name, s.name, s.value, err)
		}
	}
	return nil
}

// ProbeTimersTrap reports, when it is so, that the device's neighbour timers
// keep idle entries alive: every answer counts as a use of the entry, and an
// entry whose REACHABLE time runs out within delay_first_probe_time of its
// last use is probed instead of left STALE. With base_reachable_time (whose
// shortest draw is half of it) below delay_first_probe_time, an answered
// entry is re-confirmed forever, traffic or not.
func (d *Device) ProbeTimersTrap() (string, error) {
	read := func(name string) (int, error) {
		return readSysctlInt(filepath.Join("/proc/sys/net/ipv4/neigh", d.Name, name))
	}
	reach, err := read("base_reachable_time_ms")
	if err != nil {
		return "", err
	}
	delay, err := read("delay_first_probe_time")
	if err != nil {
		return "", err
	}
	if reach/2 < delay*1000 {
		return fmt.Sprintf("net.ipv4.neigh.%s.base_reachable_time_ms=%d can draw reachable times below delay_first_probe_time=%ds: idle entries would be re-confirmed forever and never go STALE; keep base_reachable_time_ms at least %d", d.Name, reach, delay, 2*delay*1000), nil
	}
	return "", nil
}

// SetAddress makes addr/32 the device's only IPv4 address. A different
// address left by an earlier lease is removed. It reports whether it changed
// anything.
func (d *Device) SetAddress(addr netip.Addr) (bool, error) {
	link, err := d.h.LinkByIndex(d.Index)
	if err != nil {
		return false, fmt.Errorf("fabric: look up %s: %w", d.Name, err)
	}
	want := &netlink.Addr{IPNet: &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(32, 32)}}
	have, err := d.h.AddrList(link, unix.AF_INET)
	if err != nil {
		return false, fmt.Errorf("fabric: list addresses of %s: %w", d.Name, err)
	}
	found, changed := false, false
	for _, a := range have {
		if a.IPNet.String() == want.IPNet.String() {
			found = true
			continue
		}
		d.log.Info("removing stale address from device", zap.String("device", d.Name), zap.Stringer("address", a.IPNet))
		if err := d.h.AddrDel(link, &a); err != nil {
			return changed, fmt.Errorf("fabric: remove %s from %s: %w", a.IPNet, d.Name, err)
		}
		changed = true
	}
	if found {
		return changed, nil
	}
	if err := d.h.AddrReplace(link, want); err != nil {
		return changed, fmt.Errorf("fabric: add %s to %s: %w", want.IPNet, d.Name, err)
	}
	return true, nil
}

// EnsureRoutes adds the routes of want that the device lacks; it never
// deletes one. Routes that should go are removed by the responder's
// reconciliation, the one place that knows which host routes are right, so
// that this may run at any time without undoing an answer. It reports
// whether it added anything.
func (d *Device) EnsureRoutes(src netip.Addr, want []Route) (bool, error) {
	have, err := listRoutes(d.h, d.Index, d.Name, unix.AF_INET)
	if err != nil {
		return false, err
	}
	present := make(map[Route]bool, len(have))
	for _, r := range have {
		present[r] = true
	}
	added := false
	for _, r := range want {
		if present[r] {
			continue
		}
		if err := d.h.RouteReplace(r.netlink(d.Index, 0, src)); err != nil {
			return added, fmt.Errorf("fabric: add route %s dev %s: %w", r, d.Name, err)
		}
		added = true
	}
	return added, nil
}

// checkDevice is Reader.CheckDevice.
func checkDevice(h *netlink.Handle, index int, name string, addr netip.Addr, routes []netip.Prefix) ([]string, error) {
	link, err := h.LinkByIndex(index)
	if err != nil {
		return []string{fmt.Sprintf("device %s is gone", name)}, nil
	}
	if link.Attrs().Name != name {
		return []string{fmt.Sprintf("device %s is gone (its index belongs to %s now)", name, link.Attrs().Name)}, nil
	}
	if link.Attrs().Flags&net.FlagUp == 0 {
		return []string{fmt.Sprintf("device %s is down", name)}, nil
	}
	var missing []string
	addrs, err := h.AddrList(link, unix.AF_INET)
	if err != nil {
		return nil, fmt.Errorf("fabric: list addresses of %s: %w", name, err)
	}
	found := false
	for _, a := range addrs {
		if ip, ok := netip.AddrFromSlice(a.IP.To4()); ok && ip == addr {
			found = true
		}
	}
	if !found {
		missing = append(missing, fmt.Sprintf("address %s missing on %s", addr, name))
	}
	have, err := h.RouteList(link, unix.AF_INET)
	if err != nil {
		return nil, fmt.Errorf("fabric: list routes of %s: %w", name, err)
	}
	got := map[netip.Prefix]bool{}
	for _, r := range have {
		if r.Dst != nil {
			if p, ok := prefixOf(r.Dst); ok {
				got[p] = true
			}
		}
	}
	for _, p := range routes {
		if !got[p] {
			missing = append(missing, fmt.Sprintf("route %s dev %s missing", p, name))
		}
	}
	return missing, nil
}

// IPForwarding reports whether the namespace forwards IPv4; without it,
// containers behind the host cannot be reached through the overlay.
func IPForwarding() (bool, error) {
	v, err := readSysctlInt("/proc/sys/net/ipv4/ip_forward")
	return v == 1, err
}

// NeighbourTableLimit reads the kernel's neighbour table limit,
// net.ipv4.neigh.default.gc_thresh3. It exists in the root namespace only:
// elsewhere the error says the file is missing.
func NeighbourTableLimit() (int, error) {
	return readSysctlInt("/proc/sys/net/ipv4/neigh/default/gc_thresh3")
}

// readSysctlInt reads a sysctl that holds one integer.
func readSysctlInt(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}
