package netns_test

import (
	"errors"
	"net/netip"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vtepd/vtepd/test/netns"
)

// TestDockerIPv6: two Docker hosts with real engines on a dual-stack
// overlay over a dual-stack underlay, dockerd started with what vtepd
// gives it (h1 through the systemd drop-in, h2 through the --flannel
// variables): its containers get IPv6 addresses from the host's
// FLANNEL_IPV6_SUBNET, and reach each other's over IPv6 through the
// overlay, first packet included, and over IPv4.
func TestDockerIPv6(t *testing.T) {
	t.Parallel()
	dl := newDockerLab(t, "vtdk6")
	put(t, etcdClient(t, dl.lab), prefix+"/config", dualStackConfig)
	hosts := dl.addHostsWith(t, func() (*netns.Host, error) { return dl.lab.AddHost6(true) },
		dockerSpec{opts: fromDropIn, containers: "a"},
		dockerSpec{opts: fromFlannel(), containers: "b"},
	)
	h1, h2 := hosts[0], hosts[1]
	for _, h := range hosts {
		if !slices.Contains(h.d.Args, "--ipv6") || !slices.Contains(h.d.Args, "--fixed-cidr-v6="+h.env.IPv6Subnet.Masked().String()) {
			t.Fatalf("%s: dockerd started with %v, want --ipv6 --fixed-cidr-v6=%s", h.Name, h.d.Args, h.env.IPv6Subnet.Masked())
		}
	}
	for _, hc := range []struct {
		h *engineHost
		c *netns.DockerContainer
	}{{h1, h1.a}, {h2, h2.b}} {
		c, subnet := hc.c, hc.h.env.IPv6Subnet
		out, err := c.DockerExec("ip", "-6", "-o", "addr", "show", "dev", "eth0", "scope", "global")
		if err != nil {
			t.Fatal(err)
		}
		f := strings.Fields(out)
		if len(f) < 4 {
			t.Fatalf("%s has no global IPv6 address: %q", c.Name, out)
		}
		p, err := netip.ParsePrefix(f[3])
		if err != nil || p.Bits() != subnet.Bits() || !subnet.Masked().Contains(p.Addr()) {
			t.Fatalf("%s's IPv6 address %q is not of its host's FLANNEL_IPV6_SUBNET", c.Name, f[3])
		}
		c.Addr6 = p.Addr()
		// Docker's bridge address and the container's own may be
		// tentative a moment (dockerd leaves DAD on): wait until the
		// container reaches its bridge, which crosses no overlay.
		gw := subnet.Addr()
		if err := netns.Poll(5*time.Second, func() error {
			if n, _ := dockerPing(t, c, gw, "-c1", "-W1"); n != 1 {
				return errors.New("no answer from docker0")
			}
			return nil
		}); err != nil {
			t.Fatalf("%s: its bridge %s: %v", c.Name, gw, err)
		}
	}
	n, rtt := dockerPing(t, h1.a, h2.b.Addr6, "-c1", "-W1")
	if n != 1 {
		t.Fatalf("first packet %s -> %s (%s) over IPv6 lost", h1.a.Name, h2.b.Name, h2.b.Addr6)
	}
	if err := answeredMiss(h1.Host, h2.b.Addr6); err != nil {
		t.Errorf("first packet over IPv6 crossed without a miss: %v", err)
	}
	t.Logf("first packet between Docker containers over IPv6: %v", rtt)
	if n, _ := dockerPing(t, h2.b, h1.a.Addr6, "-c3", "-i0.2", "-W1"); n != 3 {
		t.Errorf("%s -> %s over IPv6: %d of 3", h2.b.Name, h1.a.Name, n)
	}
	if n, _ := dockerPing(t, h1.a, h2.b.Addr, "-c1", "-W1"); n != 1 {
		t.Errorf("first packet %s -> %s over IPv4 lost", h1.a.Name, h2.b.Name)
	}
}
