package netns

import (
	"fmt"
	"net"
	"net/netip"
	"strconv"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Read-only views of a host's links and routes, for assertions.

// LinkStats returns a link's packet counters in the host's namespace.
func (h *Host) LinkStats(name string) (netlink.LinkStatistics, error) {
	hc, err := h.lab.conn(h.NS)
	if err != nil {
		return netlink.LinkStatistics{}, err
	}
	l, err := hc.link(name)
	if err != nil {
		return netlink.LinkStatistics{}, err
	}
	if l.Attrs().Statistics == nil {
		return netlink.LinkStatistics{}, fmt.Errorf("netns: %s on %s: no statistics", name, h.Name)
	}
	return *l.Attrs().Statistics, nil
}

// RouteTo returns the host's main-table routes whose destination is
// exactly dst, as `ip route show <dst>` lists them.
func (h *Host) RouteTo(dst netip.Prefix) ([]netlink.Route, error) {
	hc, err := h.lab.conn(h.NS)
	if err != nil {
		return nil, err
	}
	family := unix.AF_INET
	if dst.Addr().Is6() {
		family = unix.AF_INET6
	}
	routes, err := hc.nl.RouteListFiltered(family, &netlink.Route{Dst: ipNet(dst.Masked()), Table: unix.RT_TABLE_MAIN},
		netlink.RT_FILTER_DST|netlink.RT_FILTER_TABLE)
	if err != nil {
		return nil, fmt.Errorf("netns: routes to %s on %s: %w", dst, h.Name, err)
	}
	return routes, nil
}

// Describe shows a route as `ip route` would, with device names of the
// host.
func (h *Host) Describe(r netlink.Route) string {
	dev := strconv.Itoa(r.LinkIndex)
	if hc, err := h.lab.conn(h.NS); err == nil {
		if l, err := hc.nl.LinkByIndex(r.LinkIndex); err == nil {
			dev = l.Attrs().Name
		}
	}
	s := r.Dst.String()
	if r.Gw != nil {
		s += " via " + net.IP(r.Gw).String()
	}
	s += " dev " + dev
	if r.Flags&int(netlink.FLAG_ONLINK) != 0 {
		s += " onlink"
	}
	return s
}
