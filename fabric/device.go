package fabric

import (
	"cmp"
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

// VXLANOverhead6 is what encapsulation costs per packet over IPv6: the
// outer header is 40 bytes, not 20. flannel takes 50 for both and writes
// an MTU 20 bytes too large for its IPv6-underlay device (which the kernel
// quietly lowers: FLANNEL_MTU and the device then disagree); vtepd takes
// what the packets cost.
const VXLANOverhead6 = 70

// Least MTUs of a link: IPv4's (RFC 791) and IPv6's (RFC 8200).
const (
	minMTU4 = 68
	minMTU6 = 1280
)

// defaultPort is the kernel's VXLAN port, used when DeviceSpec.Port is 0.
const defaultPort = 8472

// maxNameLen is the longest interface name the kernel takes (IFNAMSIZ-1).
const maxNameLen = 15

// Device names as flannel gives them, for one VNI.
func DeviceName(vni int, ipv6 bool) string {
	if ipv6 {
		return "flannel-v6." + strconv.Itoa(vni)
	}
	return "flannel." + strconv.Itoa(vni)
}

// Overhead is what VXLAN costs per packet over an underlay of local's
// family.
func Overhead(local netip.Addr) int {
	if local.Unmap().Is6() {
		return VXLANOverhead6
	}
	return VXLANOverhead
}

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
	// IPv6 says the device carries the overlay's IPv6 part
	// (flannel-v6.<VNI>): its sysctls, address and routes are IPv6 ones.
	IPv6 bool
	// Local is the underlay address VXLAN packets leave from; unset, the
	// underlay's address of the device's family (Underlay.Addr, or
	// Underlay.Addr6 for an IPv6 device). An IPv6 device over an IPv4
	// underlay (an IPv6-only overlay on a host with no IPv6 underlay
	// address) is the caller's choice: Local = Underlay.Addr.
	Local netip.Addr
	// MTU is the underlay MTU to assume (flannel's Backend.MTU); 0 means
	// the underlay interface's. The device's MTU is this less the
	// overhead of VXLAN over Local's family.
	MTU int
	// GBP and Learning are flannel's Backend.GBP and Backend.Learning:
	// VXLAN group policy extension headers, and learning of remote MACs
	// from received packets.
	GBP, Learning bool
}

// local is the device's underlay address.
func (s DeviceSpec) local() netip.Addr {
	switch {
	case s.Local.IsValid():
		return s.Local.Unmap()
	case s.IPv6:
		return s.Underlay.Addr6
	}
	return s.Underlay.Addr
}

// mtu is the device's MTU, or an error naming what makes it too small.
func (s DeviceSpec) mtu(local netip.Addr) (int, error) {
	under, from := s.MTU, "Backend.MTU"
	if under == 0 {
		under, from = s.Underlay.MTU, "the MTU of "+s.Underlay.Name
	}
	overhead := Overhead(local)
	mtu := under - overhead
	least := minMTU4
	if s.IPv6 {
		least = minMTU6
	}
	if mtu < least {
		return 0, fmt.Errorf("fabric: %s: %s %d less %d for VXLAN over %s leaves %d, below the %d an %s link needs",
			s.Name, from, under, overhead, familyOf(local), mtu, least, familyName(s.IPv6))
	}
	return mtu, nil
}

func familyOf(a netip.Addr) string { return familyName(a.Is6()) }

func familyName(ipv6 bool) string {
	if ipv6 {
		return "IPv6"
	}
	return "IPv4"
}

// Device is the VXLAN device misses come from.
type Device struct {
	Name  string
	Index int
	MAC   net.HardwareAddr
	MTU   int
	// IPv6 says the device carries IPv6 (DeviceSpec.IPv6).
	IPv6 bool
	// Local is the underlay address its packets leave from.
	Local netip.Addr

	// underlay is the underlay interface's index, whose link changes
	// Watch reports too (direct routes are on it).
	underlay int

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
	if len(spec.Name) > maxNameLen {
		return nil, fmt.Errorf("fabric: device name %s is longer than the kernel's %d bytes (a VNI of %d does not fit flannel's name; name the device yourself)",
			spec.Name, maxNameLen, spec.VNI)
	}
	local := spec.local()
	if !local.IsValid() {
		return nil, fmt.Errorf("fabric: %s: no underlay address to send from (%s has no %s address; DeviceSpec.Local may name one of the other family)", spec.Name, spec.Underlay.Name, familyName(spec.IPv6))
	}
	mtu, err := spec.mtu(local)
	if err != nil {
		return nil, err
	}
	want := &netlink.Vxlan{
		LinkAttrs: netlink.LinkAttrs{
			Name:         spec.Name,
			MTU:          mtu,
			HardwareAddr: spec.MAC,
		},
		VxlanId:      spec.VNI,
		VtepDevIndex: spec.Underlay.Index,
		SrcAddr:      net.IP(local.AsSlice()),
		Port:         spec.Port,
		Learning:     spec.Learning,
		GBP:          spec.GBP,
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
			zap.Stringer("local", local), zap.String("underlay", spec.Underlay.Name), zap.Stringer("mac", link.Attrs().HardwareAddr),
			zap.Bool("gbp", spec.GBP), zap.Bool("learning", spec.Learning))
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
			// The kernel caps a VXLAN device's MTU at its underlay's
			// less the overhead.
			return nil, fmt.Errorf("fabric: set MTU of %s to %d (the underlay MTU %d less %d): %w; is Backend.MTU larger than the MTU of %s (%d)?",
				spec.Name, want.MTU, want.MTU+Overhead(local), Overhead(local), err, spec.Underlay.Name, spec.Underlay.MTU)
		}
	}
	d := &Device{
		Name:  spec.Name,
		Index: link.Attrs().Index,
		MAC:   link.Attrs().HardwareAddr,
		MTU:   want.MTU,
		IPv6:  spec.IPv6,
		Local: local,
		h:     h,
		log:   log,
	}
	d.underlay = spec.Underlay.Index
	if link.Attrs().Flags&net.FlagUp == 0 {
		if spec.IPv6 {
			// Before the device comes up: up, it would start duplicate
			// address detection and router solicitations at once.
			if err := d.writeSysctls(ipv6ConfSysctls); err != nil {
				return nil, err
			}
		}
		if err := h.LinkSetUp(link); err != nil {
			return nil, fmt.Errorf("fabric: set %s up: %w", spec.Name, err)
		}
	}
	return d, nil
}

func createDevice(h *netlink.Handle, want *netlink.Vxlan) (netlink.Link, error) {
	if err := h.LinkAdd(want); err != nil {
		return nil, createError(h, want, err)
	}
	link, err := h.LinkByName(want.Name)
	if err != nil {
		return nil, fmt.Errorf("fabric: look up new device %s: %w", want.Name, err)
	}
	return link, nil
}

// createError says why the kernel refused to create want, naming what it
// refused when it can tell: another device holding the VNI, port and local
// address, or one of the options (GBP, Learning) the kernel will not take
// (found by asking again without it).
func createError(h *netlink.Handle, want *netlink.Vxlan, err error) error {
	what := fmt.Sprintf("fabric: create VXLAN device %s (vni %d, port %d, local %s, gbp %v, learning %v)",
		want.Name, want.VxlanId, want.Port, want.SrcAddr, want.GBP, want.Learning)
	if errors.Is(err, unix.EEXIST) {
		if other := holderOf(h, want); other != "" {
			return fmt.Errorf("%s: %w: %s already has VNI %d on local %s, and the kernel allows one such device (remove it, or use another VNI)",
				what, err, other, want.VxlanId, want.SrcAddr)
		}
		return fmt.Errorf("%s: %w", what, err)
	}
	// Each option alone: a kernel that refuses both is told of the first.
	for _, opt := range []struct {
		name  string
		asked bool
		off   func(*netlink.Vxlan)
	}{
		{"Backend.GBP", want.GBP, func(v *netlink.Vxlan) { v.GBP = false }},
		{"Backend.Learning", want.Learning, func(v *netlink.Vxlan) { v.Learning = false }},
	} {
		if !opt.asked {
			continue
		}
		try := *want
		opt.off(&try)
		try.HardwareAddr = nil
		if h.LinkAdd(&try) == nil {
			if l, lerr := h.LinkByName(try.Name); lerr == nil {
				h.LinkDel(l)
			}
			return fmt.Errorf("%s: %w: the kernel refuses %s on this device (it takes the device without it)", what, err, opt.name)
		}
	}
	return fmt.Errorf("%s: %w", what, err)
}

// holderOf names the VXLAN device, other than want, that has want's VNI and
// local address, and a port the kernel would take for want's.
func holderOf(h *netlink.Handle, want *netlink.Vxlan) string {
	links, err := h.LinkList()
	if err != nil {
		return ""
	}
	for _, l := range links {
		v, ok := l.(*netlink.Vxlan)
		if !ok || v.Name == want.Name || v.VxlanId != want.VxlanId || !v.SrcAddr.Equal(want.SrcAddr) {
			continue
		}
		if v.Port == want.Port || want.Port == 0 || v.Port == 0 {
			return v.Name
		}
	}
	return ""
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
	// Port 0 asks for the kernel's default: 8472 (the vxlan module's
	// udp_port, which flannel's docs give too).
	if wantPort := cmp.Or(want.Port, defaultPort); have.Port != wantPort {
		differ("port", have.Port, wantPort)
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
		{"gbp", have.GBP, want.GBP},
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
	// device's MAC, and flapping the device would cost traffic. Nor is the
	// MTU: it is corrected in place.
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

// A sysctl of the device: dir is under /proc/sys/net, and holds a
// directory named after the device. Written as files: the dot in
// "flannel.1" would be read as a separator by sysctl(8)'s dotted names.
type sysctl struct{ dir, name, value string }

// Neighbour sysctls that make the miss path work, one set per family.
func probeSysctls(dir string) []sysctl {
	return []sysctl{
		// Ask user space about every unresolved address, three times one
		// retrans_time apart, before giving up on it.
		{dir, "app_solicit", "3"},
		// With proxy, unicast and multicast ARP into the device is
		// answered from (or dropped by) the device itself, and so are
		// neighbour solicitations: such probes only delay the application
		// probe of an aged entry, and the FAILED state.
		{dir, "ucast_solicit", "0"},
		{dir, "mcast_solicit", "0"},
		{dir, "mcast_resolicit", "0"},
	}
}

var (
	ipv4ProbeSysctls = probeSysctls("ipv4/neigh")
	ipv6ProbeSysctls = probeSysctls("ipv6/neigh")
	// An IPv6 device takes its address from vtepd, never from the network:
	// no duplicate address detection (nobody could answer it: the device
	// drops multicast, and a tentative address cannot be a route's source),
	// no router advertisements taken, no router solicitations sent.
	ipv6ConfSysctls = []sysctl{
		{"ipv6/conf", "accept_dad", "0"},
		{"ipv6/conf", "accept_ra", "0"},
		{"ipv6/conf", "router_solicitations", "0"},
	}
)

// sysctls are the device's sysctls EnableAppProbes writes.
func (d *Device) sysctls() []sysctl {
	if d.IPv6 {
		return append(append([]sysctl(nil), ipv6ProbeSysctls...), ipv6ConfSysctls...)
	}
	return ipv4ProbeSysctls
}

// writeSysctls writes each of ss that does not hold its value already, in
// the calling thread's network namespace.
func (d *Device) writeSysctls(ss []sysctl) error {
	for _, s := range ss {
		p := filepath.Join("/proc/sys/net", s.dir, d.Name, s.name)
		if cur, err := os.ReadFile(p); err == nil && strings.TrimSpace(string(cur)) == s.value {
			continue
		}
		if err := os.WriteFile(p, []byte(s.value), 0o644); err != nil {
			return fmt.Errorf("fabric: set %s=%s: %w", p, s.value, err)
		}
	}
	return nil
}

// EnableAppProbes sets the device's neighbour sysctls so that both new
// (INCOMPLETE) and aged (PROBE) entries are resolved by asking user space:
// /proc/sys/net/ipv4/neigh/<device>/…, or for an IPv6 device
// /proc/sys/net/ipv6/neigh/<device>/… and, in /proc/sys/net/ipv6/conf/
// <device>/, no DAD, no router advertisements or solicitations. It writes
// /proc/sys of the calling thread's network namespace.
func (d *Device) EnableAppProbes() error { return d.writeSysctls(d.sysctls()) }

// LooseReversePath sets an IPv4 device's reverse-path filter to loose
// (/proc/sys/net/ipv4/conf/<device>/rp_filter=2; the kernel applies the
// larger of that and conf/all's, so a strict all=1 becomes loose for this
// device only). DirectRouting needs it: the first packet each way between
// two hosts goes through the device while the route back to its sender is
// already the direct one on the underlay, and a strict filter drops it.
// An IPv6 device has no such sysctl. It writes /proc/sys of the calling
// thread's network namespace.
func (d *Device) LooseReversePath() error {
	if d.IPv6 {
		return nil
	}
	return d.writeSysctls([]sysctl{{"ipv4/conf", "rp_filter", "2"}})
}

// ReversePathFilter is the IPv4 reverse-path filter the kernel applies to
// packets coming in on interface name: the larger of
// /proc/sys/net/ipv4/conf/all/rp_filter and the interface's own (0 off, 1
// strict, 2 loose), in the calling thread's network namespace.
func ReversePathFilter(name string) (int, error) {
	all, err := readSysctlInt("/proc/sys/net/ipv4/conf/all/rp_filter")
	if err != nil {
		return 0, err
	}
	own, err := readSysctlInt(filepath.Join("/proc/sys/net/ipv4/conf", name, "rp_filter"))
	if err != nil {
		return 0, err
	}
	return max(all, own), nil
}

// neighDir is the directory of the device's neighbour sysctls.
func (d *Device) neighDir() string {
	if d.IPv6 {
		return filepath.Join("/proc/sys/net/ipv6/neigh", d.Name)
	}
	return filepath.Join("/proc/sys/net/ipv4/neigh", d.Name)
}

// ProbeTimersTrap reports, when it is so, that the device's neighbour timers
// keep idle entries alive: every answer counts as a use of the entry, and an
// entry whose REACHABLE time runs out within delay_first_probe_time of its
// last use is probed instead of left STALE. With base_reachable_time (whose
// shortest draw is half of it) below delay_first_probe_time, an answered
// entry is re-confirmed forever, traffic or not.
func (d *Device) ProbeTimersTrap() (string, error) {
	dir := d.neighDir()
	read := func(name string) (int, error) { return readSysctlInt(filepath.Join(dir, name)) }
	reach, err := read("base_reachable_time_ms")
	if err != nil {
		return "", err
	}
	delay, err := read("delay_first_probe_time")
	if err != nil {
		return "", err
	}
	if reach/2 < delay*1000 {
		return fmt.Sprintf("%s/base_reachable_time_ms=%d can draw reachable times below delay_first_probe_time=%ds: idle entries would be re-confirmed forever and never go STALE; keep base_reachable_time_ms at least %d", dir, reach, delay, 2*delay*1000), nil
	}
	return "", nil
}

// SetAddress makes addr the device's only address of its family: an IPv4
// device's addr/32, as today, or an IPv6 device's addr/128 (flannel's: the
// IPv6 subnet's first address), other IPv6 addresses but link-local ones
// removed. A different address left by an earlier lease is removed. It
// reports whether it changed anything.
func (d *Device) SetAddress(addr netip.Addr) (bool, error) {
	addr = addr.Unmap()
	if addr.Is6() != d.IPv6 {
		return false, fmt.Errorf("fabric: address %s for %s: the device carries %s", addr, d.Name, familyName(d.IPv6))
	}
	link, err := d.h.LinkByIndex(d.Index)
	if err != nil {
		return false, fmt.Errorf("fabric: look up %s: %w", d.Name, err)
	}
	want := &netlink.Addr{IPNet: &net.IPNet{IP: addr.AsSlice(), Mask: net.CIDRMask(addr.BitLen(), addr.BitLen())}}
	family := unix.AF_INET
	if d.IPv6 {
		family = unix.AF_INET6
		// Usable at once: without NODAD the kernel adds the address
		// tentative and clears that from a work queue later, accept_dad=0
		// or not, and until then a route cannot have it as its source
		// (EINVAL) nor a socket send from it.
		want.Flags = unix.IFA_F_NODAD
	}
	have, err := d.h.AddrList(link, family)
	if err != nil {
		return false, fmt.Errorf("fabric: list addresses of %s: %w", d.Name, err)
	}
	found, changed := false, false
	for _, a := range have {
		if a.IPNet.String() == want.IPNet.String() {
			found = true
			continue
		}
		if d.IPv6 && a.IP.IsLinkLocalUnicast() {
			continue // the kernel's own, which IPv6 needs on every link
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
// whether it added anything. Direct routes are not the device's: they go
// through Entries.SetRoute.
func (d *Device) EnsureRoutes(src netip.Addr, want []Route) (bool, error) {
	family := unix.AF_INET
	if d.IPv6 {
		family = unix.AF_INET6
	}
	have, srcs, err := listRoutesSrc(d.h, d.Index, d.Name, family)
	if err != nil {
		return false, err
	}
	// A route that lost its source counts as missing: the kernel deletes
	// an IPv4 route whose source address goes, but only clears the source
	// of an IPv6 one, and the route is written again with the new one.
	present := make(map[Route]bool, len(have))
	for i, r := range have {
		present[r] = !src.IsValid() || srcs[i] == src.Unmap()
	}
	added := false
	for _, r := range want {
		if present[r] {
			continue
		}
		if err := r.check(); err != nil {
			return added, fmt.Errorf("fabric: add route %s dev %s: %w", r, d.Name, err)
		}
		if r.Direct || r.Dst.Addr().Is6() != d.IPv6 {
			return added, fmt.Errorf("fabric: add route %s dev %s: not a route of the device (direct, or of the other family)", r, d.Name)
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
	addr = addr.Unmap()
	family := unix.AF_INET
	if addr.Is6() {
		family = unix.AF_INET6
	}
	var missing []string
	addrs, err := h.AddrList(link, family)
	if err != nil {
		return nil, fmt.Errorf("fabric: list addresses of %s: %w", name, err)
	}
	found := false
	for _, a := range addrs {
		if p, ok := prefixOf(a.IPNet); ok && p.Addr() == addr && p.Bits() == addr.BitLen() {
			found = true
		}
	}
	if !found {
		missing = append(missing, fmt.Sprintf("address %s/%d missing on %s", addr, addr.BitLen(), name))
	}
	have, err := h.RouteList(link, unix.AF_UNSPEC)
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

// IPv6Forwarding reports whether the namespace forwards IPv6
// (net.ipv6.conf.all.forwarding), which the IPv6 overlay needs as the IPv4
// one needs ip_forward.
func IPv6Forwarding() (bool, error) {
	v, err := readSysctlInt("/proc/sys/net/ipv6/conf/all/forwarding")
	return v == 1, err
}

// NeighbourTableLimit reads the kernel's neighbour table limit,
// net.ipv4.neigh.default.gc_thresh3. It exists in the root namespace only:
// elsewhere the error says the file is missing.
func NeighbourTableLimit() (int, error) {
	return readSysctlInt("/proc/sys/net/ipv4/neigh/default/gc_thresh3")
}

// NeighbourTableLimit6 reads the kernel's IPv6 neighbour table limit,
// net.ipv6.neigh.default.gc_thresh3: the NDP table is one for the whole
// kernel, as the ARP table is, and apart from it.
func NeighbourTableLimit6() (int, error) {
	return readSysctlInt("/proc/sys/net/ipv6/neigh/default/gc_thresh3")
}

// readSysctlInt reads a sysctl that holds one integer.
func readSysctlInt(path string) (int, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	return strconv.Atoi(strings.TrimSpace(string(b)))
}
