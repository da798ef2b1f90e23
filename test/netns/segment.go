package netns

import (
	"fmt"
	"net/netip"

	"github.com/vishvananda/netlink"
)

// Segment is a second underlay subnet: a bridge of its own in the underlay
// namespace, which routes between it and the lab's first one
// (UnderlayNet), as a router between two racks would. A host moved onto it
// reaches the others through that router, so that flannel's DirectRouting
// test ("same subnet") fails for it.
type Segment struct {
	Bridge string
	// Net is the segment's subnet and Gateway the underlay namespace's
	// address on it, the segment's hosts' default route.
	Net     netip.Prefix
	Gateway netip.Addr
}

// AddSegment adds bridge (e.g. "br1") to the underlay namespace with the
// first address of subnet, and turns forwarding on there. subnet must be
// a TEST-NET range other than UnderlayNet (e.g. 203.0.113.128/25).
func (l *Lab) AddSegment(bridge string, subnet netip.Prefix) (*Segment, error) {
	subnet = subnet.Masked()
	if subnet.Overlaps(UnderlayNet) {
		return nil, fmt.Errorf("netns: segment %s overlaps the underlay %s", subnet, UnderlayNet)
	}
	s := &Segment{Bridge: bridge, Net: subnet, Gateway: subnet.Addr().Next()}
	ul, err := l.conn(l.Underlay)
	if err != nil {
		return nil, err
	}
	if err := ul.nl.LinkAdd(&netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: bridge}}); err != nil {
		return nil, fmt.Errorf("netns: bridge %s in %s: %w", bridge, l.Underlay, err)
	}
	br, err := ul.link(bridge)
	if err != nil {
		return nil, err
	}
	err = do(
		func() error { return ul.addAddrs(br, netip.PrefixFrom(s.Gateway, subnet.Bits())) },
		func() error { return ul.up(br) },
		func() error { return ul.sysctl("net.ipv4.ip_forward", "1") },
	)
	if err != nil {
		return nil, err
	}
	return s, nil
}

// MoveTo puts the host on segment s with address addr: its underlay port
// moves to s's bridge, eth0's address becomes addr (h.IP with it) and its
// default route goes via s's gateway. Call it before starting anything on
// the host that uses its address.
func (h *Host) MoveTo(s *Segment, addr netip.Addr) error {
	if !s.Net.Contains(addr) || addr == s.Gateway {
		return fmt.Errorf("netns: %s is not a host address of segment %s", addr, s.Net)
	}
	ul, err := h.lab.conn(h.lab.Underlay)
	if err != nil {
		return err
	}
	hc, err := h.lab.conn(h.NS)
	if err != nil {
		return err
	}
	port, err := ul.link(h.Name)
	if err != nil {
		return err
	}
	eth0, err := hc.link("eth0")
	if err != nil {
		return err
	}
	old := &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(h.IP, UnderlayNet.Bits()))}
	err = do(
		func() error {
			return ul.nl.LinkSetMaster(port, &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: s.Bridge}})
		},
		// Deleting the address takes the default route with it.
		func() error { return hc.nl.AddrDel(eth0, old) },
		func() error { return hc.addAddrs(eth0, netip.PrefixFrom(addr, s.Net.Bits())) },
		func() error { return hc.defaultRoute(eth0, s.Gateway) },
		func() error { return ul.waitOperUp(h.Name, s.Bridge) },
	)
	if err != nil {
		return fmt.Errorf("netns: moving %s to %s: %w", h.Name, s.Net, err)
	}
	h.IP = addr
	return nil
}

// SetPortMTU sets the MTU of the host's port on the underlay bridge: the
// underlay's path MTU to and from the host, below which packets are
// dropped without a word, as a tunnel's underlay drops them.
func (h *Host) SetPortMTU(mtu int) error {
	ul, err := h.lab.conn(h.lab.Underlay)
	if err != nil {
		return err
	}
	port, err := ul.link(h.Name)
	if err != nil {
		return err
	}
	if err := ul.nl.LinkSetMTU(port, mtu); err != nil {
		return fmt.Errorf("netns: MTU %d on %s's underlay port: %w", mtu, h.Name, err)
	}
	return nil
}
