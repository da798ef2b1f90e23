package netns

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"regexp"
	"strconv"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vtepd/vtepd/store"
	clientv3 "go.etcd.io/etcd/client/v3"
)

// The flanneld-style host's vxlan backend options, as flanneld's vxlan
// backend applies them (flannel's pkg/backend/vxlan: device.go,
// vxlan_network.go). Nothing here runs flanneld: the host's kernel state is
// written to be what flanneld would leave, so that vtepd hosts are tested
// against it.

// FlannelOptions are the Backend fields of the network config a
// flanneld-style host honours, as flanneld's vxlan backend does.
type FlannelOptions struct {
	// MTU is Backend.MTU: the device's MTU is MTU less 50 (flannel takes
	// 50 for either underlay family), and so is FLANNEL_MTU. Zero keeps
	// AddFlannelHost's 1450 (an underlay MTU of 1500).
	MTU int
	// DirectRouting is Backend.DirectRouting: Sync routes a peer whose
	// public IP `ip route get` finds on a connected route (one route, no
	// gateway) via that public IP, with no device and no VXLAN entries.
	DirectRouting bool
}

// flannelOverhead is flanneld's encapOverhead, for both families.
const flannelOverhead = 50

// deviceMTU is the MTU flanneld gives its devices.
func (o FlannelOptions) deviceMTU() int {
	if o.MTU == 0 {
		return 1500 - flannelOverhead
	}
	return o.MTU - flannelOverhead
}

// AddFlannelHostWith is AddFlannelHost for a network config with Backend
// options: the device and FLANNEL_MTU take opts.MTU, and Sync programs
// opts.DirectRouting's routes.
func (l *Lab) AddFlannelHostWith(ctx context.Context, network, subnet netip.Prefix, opts FlannelOptions) (*FlannelHost, error) {
	f, err := l.AddFlannelHost(ctx, network, subnet)
	if err != nil {
		return nil, err
	}
	f.Options = opts
	hc, err := l.conn(f.NS)
	if err != nil {
		return nil, err
	}
	for _, name := range flannelDevices {
		dev, err := hc.nl.LinkByName(name)
		var notFound netlink.LinkNotFoundError
		if errors.As(err, &notFound) {
			continue
		}
		if err == nil {
			err = hc.nl.LinkSetMTU(dev, opts.deviceMTU())
		}
		if err != nil {
			return nil, fmt.Errorf("netns: flannel host %s: MTU of %s: %w", f.Name, name, err)
		}
	}
	return f, f.setEnvMTU()
}

// flannelDevices are the devices flanneld's vxlan backend makes for VNI 1.
var flannelDevices = []string{"flannel.1", "flannel-v6.1"}

var envMTURe = regexp.MustCompile(`(?m)^FLANNEL_MTU=.*$`)

// setEnvMTU sets FLANNEL_MTU in the host's subnet file to the devices' MTU,
// leaving its other lines as they are.
func (f *FlannelHost) setEnvMTU() error {
	b, err := os.ReadFile(f.SubnetFile)
	if err != nil {
		return err
	}
	line := "FLANNEL_MTU=" + strconv.Itoa(f.Options.deviceMTU())
	if !envMTURe.Match(b) {
		return fmt.Errorf("netns: %s has no FLANNEL_MTU line", f.SubnetFile)
	}
	return os.WriteFile(f.SubnetFile, envMTURe.ReplaceAll(b, []byte(line)), 0o644)
}

// syncDirect is Sync's DirectRouting step for one peer: if flanneld would
// reach publicIP directly, it writes the route flanneld writes and says so.
func (f *FlannelHost) syncDirect(hc *nsConn, subnet netip.Prefix, publicIP netip.Addr) (bool, error) {
	if !f.Options.DirectRouting {
		return false, nil
	}
	// flannel's ip.DirectRouting: exactly one route, without a gateway.
	routes, err := hc.nl.RouteGet(publicIP.AsSlice())
	if err != nil {
		return false, fmt.Errorf("netns: flannel host %s: route get %s: %w", f.Name, publicIP, err)
	}
	if len(routes) != 1 || routes[0].Gw != nil {
		return false, nil
	}
	if err := hc.nl.RouteReplace(&netlink.Route{Dst: ipNet(subnet), Gw: publicIP.AsSlice()}); err != nil {
		return true, fmt.Errorf("netns: flannel host %s: direct route %s via %s: %w", f.Name, subnet, publicIP, err)
	}
	return true, nil
}

// Restart does what flanneld does when it starts again on the host (after
// vtepd ran there, say): it keeps flannel.1 if flanneld's own check finds
// it compatible, else deletes it and creates its own, with a new random
// MAC (etcd mode keeps no MAC); publishes the lease of the same subnet
// with that device's MAC under a new 24 h etcd lease; gives the device
// its address; writes the subnet file; and Syncs. It returns the number of
// leases Sync wrote entries for.
func (f *FlannelHost) Restart(ctx context.Context) (int, error) {
	hc, err := f.lab.conn(f.NS)
	if err != nil {
		return 0, err
	}
	eth0, err := hc.link("eth0")
	if err != nil {
		return 0, err
	}
	want := &netlink.Vxlan{LinkAttrs: netlink.LinkAttrs{Name: "flannel.1", MTU: f.Options.deviceMTU()}, VxlanId: 1,
		SrcAddr: f.IP.AsSlice(), VtepDevIndex: eth0.Attrs().Index, Port: 8472}
	dev, err := hc.nl.LinkByName(want.Name)
	var notFound netlink.LinkNotFoundError
	switch {
	case errors.As(err, &notFound):
		dev = nil
	case err != nil:
		return 0, fmt.Errorf("netns: flannel host %s: %s: %w", f.Name, want.Name, err)
	case !flannelCompatible(dev, want):
		if err := hc.nl.LinkDel(dev); err != nil {
			return 0, fmt.Errorf("netns: flannel host %s: delete incompatible %s: %w", f.Name, want.Name, err)
		}
		dev = nil
	}
	if dev == nil {
		if err := hc.nl.LinkAdd(want); err != nil {
			return 0, fmt.Errorf("netns: flannel host %s: create %s: %w", f.Name, want.Name, err)
		}
		if dev, err = hc.link(want.Name); err != nil {
			return 0, err
		}
	}
	if dev.Attrs().MTU != want.MTU {
		if err := hc.nl.LinkSetMTU(dev, want.MTU); err != nil {
			return 0, fmt.Errorf("netns: flannel host %s: MTU of %s: %w", f.Name, want.Name, err)
		}
	}
	f.MAC = dev.Attrs().HardwareAddr
	if err := f.publish(ctx); err != nil {
		return 0, err
	}
	// flanneld's Configure: the subnet's network address as /32, then up.
	addr := &netlink.Addr{IPNet: ipNet(netip.PrefixFrom(f.Subnet.Addr(), 32))}
	if err := hc.nl.AddrReplace(dev, addr); err != nil {
		return 0, fmt.Errorf("netns: flannel host %s: address of %s: %w", f.Name, want.Name, err)
	}
	if err := hc.up(dev); err != nil {
		return 0, err
	}
	env := fmt.Sprintf("FLANNEL_NETWORK=%s\nFLANNEL_SUBNET=%s\nFLANNEL_MTU=%d\nFLANNEL_IPMASQ=false\n",
		f.Network, netip.PrefixFrom(f.Subnet.Addr().Next(), f.Subnet.Bits()), want.MTU)
	if err := os.WriteFile(f.SubnetFile, []byte(env), 0o644); err != nil {
		return 0, err
	}
	return f.Sync(ctx)
}

// flannelCompatible is flanneld's check of an existing device (its
// vxlanLinksIncompat): type, VNI, underlay index, local address, group,
// L2miss, port and GBP. MTU and Learning are not compared.
func flannelCompatible(have netlink.Link, want *netlink.Vxlan) bool {
	v, ok := have.(*netlink.Vxlan)
	if !ok {
		return false
	}
	return v.VxlanId == want.VxlanId &&
		(v.VtepDevIndex == 0 || want.VtepDevIndex == 0 || v.VtepDevIndex == want.VtepDevIndex) &&
		(v.SrcAddr == nil || want.SrcAddr == nil || v.SrcAddr.Equal(want.SrcAddr)) &&
		(v.Group == nil || v.Group.IsUnspecified()) && v.L2miss == want.L2miss &&
		(v.Port == 0 || want.Port == 0 || v.Port == want.Port) && v.GBP == want.GBP
}

// publish writes the host's lease as flanneld renews one: an unconditional
// put of its JSON under a new 24 h etcd lease.
func (f *FlannelHost) publish(ctx context.Context) error {
	c, err := f.lab.EtcdClient()
	if err != nil {
		return err
	}
	defer c.Close()
	grant, err := c.Grant(ctx, int64((24 * time.Hour).Seconds()))
	if err != nil {
		return fmt.Errorf("netns: flannel host lease: %w", err)
	}
	key := store.SubnetsPrefix("/coreos.com/network") + store.SubnetKey(f.Subnet)
	value := fmt.Sprintf(`{"PublicIP":"%s","PublicIPv6":null,"BackendType":"vxlan","BackendData":{"VNI":1,"VtepMAC":"%s"}}`, f.IP, f.MAC)
	if _, err := c.Put(ctx, key, value, clientv3.WithLease(grant.ID)); err != nil {
		return fmt.Errorf("netns: flannel host lease %s: %w", key, err)
	}
	return nil
}
