package fabric

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Route is a route in the main table, IPv4 or IPv6 by Dst. Through the VXLAN
// device it is either on-link (Via unset: the overlay route, every address
// a neighbour of the device) or via a gateway reached on-link (a host route
// of the host answer mode: a peer's whole subnet through its first
// address). A Direct route is flannel's DirectRouting one: a peer's subnet
// via the peer's public IP, on the underlay device, no VXLAN at all (the
// peer is on the underlay's own subnet).
type Route struct {
	Dst    netip.Prefix
	Via    netip.Addr
	Direct bool
}

func (r Route) String() string {
	switch {
	case r.Direct:
		return fmt.Sprintf("%s via %s (direct)", r.Dst, r.Via)
	case r.Via.IsValid():
		return fmt.Sprintf("%s via %s onlink", r.Dst, r.Via)
	}
	return r.Dst.String()
}

// check says why the kernel could not take r.
func (r Route) check() error {
	if !r.Dst.IsValid() {
		return errors.New("no destination")
	}
	if r.Via.IsValid() && r.Via.Is4() != r.Dst.Addr().Is4() {
		// The kernel takes an IPv4 route via an IPv6 gateway, never the
		// other way round ("IPv6 does not support RTA_VIA attribute");
		// vtepd writes neither.
		return errors.New("the gateway is not of the destination's family")
	}
	if r.Direct && !r.Via.IsValid() {
		return errors.New("a direct route needs the peer's public IP as its gateway")
	}
	return nil
}

// netlink is r as vishvananda/netlink writes it: on the device with index
// dev, or, Direct, on the underlay device with index underlay.
func (r Route) netlink(dev, underlay int, src netip.Addr) *netlink.Route {
	bits := 32
	if r.Dst.Addr().Is6() {
		bits = 128
	}
	nr := &netlink.Route{
		LinkIndex: dev,
		Dst:       &net.IPNet{IP: r.Dst.Addr().AsSlice(), Mask: net.CIDRMask(r.Dst.Bits(), bits)},
		Scope:     netlink.SCOPE_LINK,
	}
	if bits == 128 {
		// IPv6 routes have no scope; the kernel lists every one as global.
		nr.Scope = netlink.SCOPE_UNIVERSE
	}
	switch {
	case r.Direct:
		// As flanneld writes it: via the peer, no onlink, no source (the
		// host's own traffic leaves from its underlay address, as to any
		// neighbour on the underlay).
		nr.LinkIndex = underlay
		nr.Gw = r.Via.AsSlice()
		nr.Scope = netlink.SCOPE_UNIVERSE
		return nr
	case r.Via.IsValid():
		nr.Gw = r.Via.AsSlice()
		nr.Scope = netlink.SCOPE_UNIVERSE
		nr.Flags = int(netlink.FLAG_ONLINK)
	}
	if src.IsValid() {
		nr.Src = src.AsSlice()
	}
	return nr
}

// listRoutes returns the device's routes of family (AF_INET, AF_INET6, or
// AF_UNSPEC for both) in the main table, leaving out the kernel's own.
func listRoutes(h *netlink.Handle, ifindex int, name string, family int) ([]Route, error) {
	out, _, err := listRoutesSrc(h, ifindex, name, family)
	return out, err
}

// listRoutesSrc is listRoutes, with each route's source address (invalid
// when it has none).
func listRoutesSrc(h *netlink.Handle, ifindex int, name string, family int) ([]Route, []netip.Addr, error) {
	have, err := dumpRoutes(h, ifindex, name, family)
	if err != nil {
		return nil, nil, err
	}
	out := make([]Route, 0, len(have))
	srcs := make([]netip.Addr, 0, len(have))
	for _, r := range have {
		if r.Dst == nil || r.Protocol == unix.RTPROT_KERNEL {
			continue
		}
		p, ok := prefixOf(r.Dst)
		if !ok {
			continue
		}
		rt := Route{Dst: p}
		if gw, ok := netip.AddrFromSlice(r.Gw); ok {
			rt.Via = gw.Unmap()
		}
		src, _ := netip.AddrFromSlice(r.Src)
		out = append(out, rt)
		srcs = append(srcs, src.Unmap())
	}
	return out, srcs, nil
}

// listDirectRoutes returns the routes of family on the underlay device with
// index underlay whose destination lies inside one of networks, and which
// go via a gateway: vtepd's DirectRouting routes, or flanneld's.
func listDirectRoutes(h *netlink.Handle, underlay, family int, networks []netip.Prefix) ([]Route, error) {
	if underlay <= 0 || len(networks) == 0 {
		return nil, nil
	}
	have, err := dumpRoutes(h, underlay, fmt.Sprintf("underlay ifindex %d", underlay), family)
	if err != nil {
		return nil, err
	}
	var out []Route
	for _, r := range have {
		if r.Dst == nil || r.Protocol == unix.RTPROT_KERNEL || r.Gw == nil {
			continue
		}
		p, ok := prefixOf(r.Dst)
		if !ok || !inside(p, networks) {
			continue
		}
		gw, ok := netip.AddrFromSlice(r.Gw)
		if !ok {
			continue
		}
		out = append(out, Route{Dst: p, Via: gw.Unmap(), Direct: true})
	}
	return out, nil
}

func dumpRoutes(h *netlink.Handle, ifindex int, name string, family int) ([]netlink.Route, error) {
	link, err := h.LinkByIndex(ifindex)
	if err != nil {
		return nil, fmt.Errorf("fabric: look up %s: %w", name, err)
	}
	have, err := listRetrying(func() ([]netlink.Route, error) { return h.RouteList(link, family) })
	if err != nil {
		return nil, fmt.Errorf("fabric: list routes of %s: %w", name, err)
	}
	return have, nil
}

// inside reports whether p lies inside one of networks.
func inside(p netip.Prefix, networks []netip.Prefix) bool {
	for _, n := range networks {
		if n.Addr().Is4() == p.Addr().Is4() && n.Bits() <= p.Bits() && n.Contains(p.Addr()) {
			return true
		}
	}
	return false
}

// Routes lists the device's routes of its family (the kernel's own left
// out) and, opened WithDirectRoutes, the direct routes on the underlay.
func (e *Entries) Routes() ([]Route, error) {
	out, err := listRoutes(e.h, e.ifindex, e.name, e.family())
	if err != nil {
		return nil, err
	}
	direct, err := listDirectRoutes(e.h, e.underlay, e.family(), e.networks)
	if err != nil {
		return nil, err
	}
	return append(out, direct...), nil
}

// SetRoute installs r with src as the source address of the host's own
// traffic (src is not used by a Direct route). A Direct route needs
// Entries opened WithDirectRoutes.
func (e *Entries) SetRoute(r Route, src netip.Addr) error {
	if err := e.routeOK(r); err != nil {
		return e.count(OpSetRoute, e.invalid(err, "set route %s", r))
	}
	if err := e.h.RouteReplace(r.netlink(e.ifindex, e.underlay, src)); err != nil {
		return e.count(OpSetRoute, e.wrap(err, "set route %s", r))
	}
	return e.count(OpSetRoute, nil)
}

// DelRoute removes r. Removing a route that is not there is not an error.
func (e *Entries) DelRoute(r Route) error {
	if err := e.routeOK(r); err != nil {
		return e.count(OpDelRoute, e.invalid(err, "delete route %s", r))
	}
	if err := e.h.RouteDel(r.netlink(e.ifindex, e.underlay, netip.Addr{})); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
		return e.count(OpDelRoute, e.wrap(err, "delete route %s", r))
	}
	return e.count(OpDelRoute, nil)
}

func (e *Entries) routeOK(r Route) error {
	if err := r.check(); err != nil {
		return err
	}
	if r.Dst.Addr().Is6() != e.ipv6 {
		if e.ipv6 {
			return errNotIPv6
		}
		return errNotIPv4
	}
	if r.Direct && e.underlay <= 0 {
		return errors.New("no underlay device to put a direct route on (open the writer with fabric.WithDirectRoutes)")
	}
	return nil
}

// prefixOf converts a route's or address's network to a prefix, IPv4 or
// IPv6.
func prefixOf(n *net.IPNet) (netip.Prefix, bool) {
	ones, bits := n.Mask.Size()
	a, ok := netip.AddrFromSlice(n.IP)
	if !ok || bits == 0 {
		return netip.Prefix{}, false
	}
	if bits == 32 {
		a = a.Unmap()
	}
	if a.BitLen() != bits {
		return netip.Prefix{}, false
	}
	return netip.PrefixFrom(a, ones), true
}
