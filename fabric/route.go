package fabric

import (
	"errors"
	"fmt"
	"net"
	"net/netip"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Route is an IPv4 route through the VXLAN device in the main table: either
// on-link (Via unset: the overlay route, every address a neighbour of the
// device) or via a gateway reached on-link (a host route of the host answer
// mode: a peer's whole subnet through its first address).
type Route struct {
	Dst netip.Prefix
	Via netip.Addr
}

func (r Route) String() string {
	if r.Via.IsValid() {
		return fmt.Sprintf("%s via %s onlink", r.Dst, r.Via)
	}
	return r.Dst.String()
}

func (r Route) netlink(ifindex int, src netip.Addr) *netlink.Route {
	nr := &netlink.Route{
		LinkIndex: ifindex,
		Dst:       &net.IPNet{IP: r.Dst.Addr().AsSlice(), Mask: net.CIDRMask(r.Dst.Bits(), 32)},
		Scope:     netlink.SCOPE_LINK,
	}
	if src.IsValid() {
		nr.Src = src.AsSlice()
	}
	if r.Via.IsValid() {
		nr.Gw = r.Via.AsSlice()
		nr.Scope = netlink.SCOPE_UNIVERSE
		nr.Flags = int(netlink.FLAG_ONLINK)
	}
	return nr
}

// listRoutes returns the device's IPv4 routes in the main table, leaving
// out the kernel's own.
func listRoutes(h *netlink.Handle, ifindex int, name string) ([]Route, error) {
	link, err := h.LinkByIndex(ifindex)
	if err != nil {
		return nil, fmt.Errorf("fabric: look up %s: %w", name, err)
	}
	have, err := listRetrying(func() ([]netlink.Route, error) { return h.RouteList(link, unix.AF_INET) })
	if err != nil {
		return nil, fmt.Errorf("fabric: list routes of %s: %w", name, err)
	}
	out := make([]Route, 0, len(have))
	for _, r := range have {
		if r.Dst == nil || r.Protocol == unix.RTPROT_KERNEL {
			continue
		}
		p, ok := prefixOf(r.Dst)
		if !ok {
			continue
		}
		rt := Route{Dst: p}
		if gw, ok := netip.AddrFromSlice(r.Gw.To4()); ok && r.Gw != nil {
			rt.Via = gw
		}
		out = append(out, rt)
	}
	return out, nil
}

// Routes lists the device's IPv4 routes (the kernel's own left out).
func (e *Entries) Routes() ([]Route, error) { return listRoutes(e.h, e.ifindex, e.name) }

// SetRoute installs r with src as the source address of the host's own
// traffic.
func (e *Entries) SetRoute(r Route, src netip.Addr) error {
	if err := e.h.RouteReplace(r.netlink(e.ifindex, src)); err != nil {
		return e.count(OpSetRoute, e.wrap(err, "set route %s", r))
	}
	return e.count(OpSetRoute, nil)
}

// DelRoute removes r. Removing a route that is not there is not an error.
func (e *Entries) DelRoute(r Route) error {
	if err := e.h.RouteDel(r.netlink(e.ifindex, netip.Addr{})); err != nil && !errors.Is(err, unix.ESRCH) && !errors.Is(err, unix.ENOENT) {
		return e.count(OpDelRoute, e.wrap(err, "delete route %s", r))
	}
	return e.count(OpDelRoute, nil)
}
