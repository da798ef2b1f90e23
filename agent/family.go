package agent

import (
	"net/netip"

	"github.com/vtepd/vtepd/fabric"
	"github.com/vtepd/vtepd/miss"
	"github.com/vtepd/vtepd/store"
)

// family is one of the overlay's address families: its VXLAN device, the
// writer and the responder of its misses. A dual-stack host has two, as
// flannel's: flannel.<VNI> carries the IPv4 part of the leases and
// flannel-v6.<VNI> the IPv6 part.
type family struct {
	ipv6    bool
	network netip.Prefix // the overlay's network of this family
	local   netip.Addr   // the device's underlay address
	dev     *fabric.Device
	entries *fabric.Entries
	// responder answers the device's misses.
	responder *miss.Responder
	expiry    *expiry
	tel       *familyTelemetry
}

// name is the family's label in logs, metrics and status.
func (f *family) name() string {
	if f.ipv6 {
		return "ipv6"
	}
	return "ipv4"
}

// part is l's part in this family.
func (f *family) part(l store.Lease) (store.Part, bool) {
	if f.ipv6 {
		return l.IPv6()
	}
	return l.IPv4()
}

// overlayRoutes are the device's routes: the one for its whole network.
func (f *family) overlayRoutes() []fabric.Route { return []fabric.Route{{Dst: f.network}} }

// direct is the responder's DirectRouting test, or nil when it is off:
// flannel's, the peer's public IP on the underlay's subnet of the family
// the device rides (an IPv6 device over an IPv4 underlay cannot: the
// kernel has no IPv6 route via an IPv4 gateway).
func (f *family) direct(cfg store.Config, u fabric.Underlay) func(netip.Addr) bool {
	if !cfg.Backend.DirectRouting || f.ipv6 && !f.local.Is6() {
		return nil
	}
	return u.Reaches
}
