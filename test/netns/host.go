package netns

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/vishvananda/netlink"
	"github.com/vishvananda/netns"
	"github.com/vtepd/vtepd/fabric"
	"github.com/vtepd/vtepd/subnetfile"
	"golang.org/x/sys/unix"
)

// Host is a namespace standing for one machine of the overlay.
type Host struct {
	Index int
	Name  string // short name, e.g. h1
	NS    string // namespace
	IP    netip.Addr
	// SubnetFile is where this host's vtepd writes the subnet file.
	SubnetFile string
	// Vtepd is the agent process, once started.
	Vtepd *Process
	// Container is the host's container, once added.
	Container *Container
	// Endpoints, if set, are the etcd endpoints this host's vtepd uses
	// instead of every member's.
	Endpoints []string
	// LogLevel is vtepd's --log-level (default debug: tests read every
	// miss from the log; benchmarks use info).
	LogLevel string
	// Env is added to vtepd's environment (NAME=value), as systemd's
	// NOTIFY_SOCKET would be.
	Env []string

	starts int

	lab *Lab
}

// AddHost adds host N+1: a namespace with eth0 on the underlay bridge,
// address 198.51.100.(10+N+1)/24, a default route via the bridge, and IPv4
// forwarding on (as Docker turns it on).
func (l *Lab) AddHost() (*Host, error) {
	l.mu.Lock()
	l.nextHost++
	i := l.nextHost
	l.mu.Unlock()
	h := &Host{
		Index:      i,
		Name:       fmt.Sprintf("h%d", i),
		NS:         fmt.Sprintf("%s-h%d", l.Name, i),
		IP:         netip.AddrFrom4([4]byte{198, 51, 100, byte(10 + i)}),
		SubnetFile: filepath.Join(l.Dir, fmt.Sprintf("h%d.subnet.env", i)),
		lab:        l,
	}
	hc, err := l.addNamespace(h.NS)
	if err != nil {
		return nil, err
	}
	ul, err := l.conn(l.Underlay)
	if err != nil {
		return nil, err
	}
	eth0, port, err := veth(hc, "eth0", ul, h.Name, 0)
	if err != nil {
		return nil, err
	}
	err = do(
		func() error {
			return ul.nl.LinkSetMaster(port, &netlink.Bridge{LinkAttrs: netlink.LinkAttrs{Name: "br0"}})
		},
		func() error { return ul.up(port) },
		func() error { return hc.addAddrs(eth0, netip.PrefixFrom(h.IP, UnderlayNet.Bits())) },
		func() error { return hc.up(eth0) },
		func() error { return hc.defaultRoute(eth0, UnderlayBridge) },
		func() error { return hc.sysctl("net.ipv4.ip_forward", "1") },
		func() error { return ul.waitOperUp(h.Name, "br0") },
		func() error { return hc.waitOperUp("eth0") },
	)
	if err != nil {
		return nil, fmt.Errorf("netns: host %s: %w", h.Name, err)
	}
	l.mu.Lock()
	l.hosts = append(l.hosts, h)
	l.mu.Unlock()
	return h, nil
}

// StartVtepd starts `vtepd run` on the host against the lab's etcd, at debug
// level, and waits until it has written its subnet file (the last thing it
// does when ready). Extra arguments are appended.
func (h *Host) StartVtepd(extra ...string) (*Process, error) {
	p, err := h.StartVtepdNoWait(extra...)
	if err != nil {
		return nil, err
	}
	return p, h.WaitReady(p, 30*time.Second)
}

// StartVtepdNoWait starts vtepd without waiting for it to be ready. Each
// start logs to a file of its own (h1.vtepd.log, h1.vtepd.2.log, ...), so
// that a test reads this run's log. A subnet file left by an earlier run
// stays: vtepd reads it for the subnet it held.
func (h *Host) StartVtepdNoWait(extra ...string) (*Process, error) {
	h.starts++
	name := h.Name + ".vtepd"
	if h.starts > 1 {
		name = fmt.Sprintf("%s.vtepd.%d", h.Name, h.starts)
	}
	endpoints := h.Endpoints
	if len(endpoints) == 0 {
		endpoints = h.lab.Endpoints()
	}
	var args []string
	if len(h.Env) > 0 {
		args = append(append(args, "env"), h.Env...)
	}
	args = append(args, h.lab.Bin.Vtepd, "run",
		"--etcd-endpoints", strings.Join(endpoints, ","),
		"--subnet-file", h.SubnetFile,
		"--log-level", cmp.Or(h.LogLevel, "debug"),
		"--log-format", "json",
	)
	p, err := h.lab.Start(h.NS, name, append(args, extra...)...)
	if err != nil {
		return nil, err
	}
	h.Vtepd = p
	return p, nil
}

// WaitReady waits until p says it is ready (it writes the subnet file just
// before), or has exited.
func (h *Host) WaitReady(p *Process, timeout time.Duration) error {
	err := poll(timeout, func() error {
		if done, err := p.Exited(); done {
			return fmt.Errorf("vtepd on %s exited (%v) before it was ready", h.Name, err)
		}
		if len(p.Entries("vtepd ready")) == 0 {
			return errors.New("not ready yet")
		}
		return nil
	})
	if err != nil {
		return fmt.Errorf("netns: vtepd on %s not ready: %w\n%s", h.Name, err, Tail(p.Log(), 20))
	}
	return nil
}

// Subnet reads the host's subnet file.
func (h *Host) Subnet() (subnetfile.Env, error) { return subnetfile.Read(h.SubnetFile) }

// Exec runs a command in the host's namespace and returns its output.
func (h *Host) Exec(args ...string) (string, error) {
	return h.lab.output(append([]string{"ip", "netns", "exec", h.NS}, args...)...)
}

// Sysctl sets a sysctl in the host's namespace, named as sysctl(8) takes
// it: with dots, or with slashes where a part holds a dot.
func (h *Host) Sysctl(name, value string) error {
	return setSysctl(h.NS, name, value)
}

// Container is a namespace behind a host's container bridge.
type Container struct {
	NS   string
	Host *Host
	// Addr is the container's primary address (the subnet's .2).
	Addr netip.Addr
	// Extra are further addresses on the container, fresh targets for
	// first-packet tests.
	Extra []netip.Addr
	// Addr6 and Extra6 are the same in IPv6 (AddContainerDual).
	Addr6  netip.Addr
	Extra6 []netip.Addr
}

// AddContainer builds the host's container bridge from its subnet file
// (cbr0 with FLANNEL_SUBNET and FLANNEL_MTU, as dockerd --bip --mtu would)
// and one container on it with .2 and extra more addresses from .10 up.
// The host's vtepd must be ready. (AddContainerDual adds IPv6.)
func (h *Host) AddContainer(extra int) (*Container, error) { return h.addContainer(extra, false) }

// PingResult is what one ping run reported.
type PingResult struct {
	Sent, Received int
	// RTTs of the replies, in order.
	RTTs []time.Duration
	// Output is ping's output.
	Output string
}

var (
	rttRe   = regexp.MustCompile(`time=([0-9.]+) ms`)
	countRe = regexp.MustCompile(`(\d+) packets transmitted, (\d+) received`)
)

// Ping runs ping in the container. args go to ping before the address,
// e.g. "-c1", "-W1". Ping gives up after five minutes.
func (c *Container) Ping(addr netip.Addr, args ...string) (PingResult, error) {
	argv := append([]string{"ip", "netns", "exec", c.NS, "ping", "-n"}, args...)
	argv = append(argv, addr.String())
	out, err := c.Host.lab.outputWithin(5*time.Minute, argv...)
	res, perr := ParsePing(out)
	if perr != nil {
		return res, fmt.Errorf("netns: ping %s from %s: %v: %w", addr, c.NS, err, perr)
	}
	// ping exits non-zero when a packet is lost; the counts say so.
	return res, nil
}

// Exec runs a command in the container's namespace and returns its output.
func (c *Container) Exec(args ...string) (string, error) {
	return c.Host.lab.output(append([]string{"ip", "netns", "exec", c.NS}, args...)...)
}

// StartPing starts ping in the container in the background; parse its
// output with ParsePing once it has exited.
func (c *Container) StartPing(name string, addr netip.Addr, args ...string) (*Process, error) {
	argv := append([]string{"ping", "-n"}, args...)
	return c.Host.lab.Start(c.NS, name, append(argv, addr.String())...)
}

// ParsePing reads ping's summary from its output.
func ParsePing(out string) (PingResult, error) {
	res := PingResult{Output: out}
	m := countRe.FindStringSubmatch(out)
	if m == nil {
		return res, fmt.Errorf("netns: no ping summary in output:\n%s", Tail(out, 5))
	}
	res.Sent, _ = strconv.Atoi(m[1])
	res.Received, _ = strconv.Atoi(m[2])
	for _, m := range rttRe.FindAllStringSubmatch(out, -1) {
		ms, _ := strconv.ParseFloat(m[1], 64)
		res.RTTs = append(res.RTTs, time.Duration(ms*float64(time.Millisecond)))
	}
	return res, nil
}

// Kernel is a read-only view of a host's VXLAN device state, for
// assertions.
type Kernel struct {
	Neighbours []fabric.Neighbour
	FDB        []fabric.FDBEntry
	Routes     []netlink.Route
	Device     netlink.Link
}

// Kernel reads the host's device, its IPv4 neighbour and FDB entries, and
// the IPv4 routes through it.
func (h *Host) Kernel(device string) (Kernel, error) { return h.kernelOf(device, false) }

// kernelOf reads an IPv4 (flannel.<VNI>) or IPv6 (flannel-v6.<VNI>) device.
func (h *Host) kernelOf(device string, ipv6 bool) (Kernel, error) {
	ns, err := netns.GetFromName(h.NS)
	if err != nil {
		return Kernel{}, err
	}
	defer ns.Close()
	nh, err := netlink.NewHandleAt(ns, unix.NETLINK_ROUTE)
	if err != nil {
		return Kernel{}, err
	}
	defer nh.Close()
	link, err := nh.LinkByName(device)
	if err != nil {
		return Kernel{}, fmt.Errorf("netns: %s on %s: %w", device, h.Name, err)
	}
	// A Reader, not Entries: assertions read through the read-only
	// socket, never the one vtepd's writes go through.
	r, err := fabric.OpenReaderAt(ns)
	if err != nil {
		return Kernel{}, err
	}
	defer r.Close()
	k := Kernel{Device: link}
	neighbours, err := r.Neighbours(link.Attrs().Index)
	if err != nil {
		return Kernel{}, err
	}
	for _, n := range neighbours {
		if n.IP.Is6() == ipv6 {
			k.Neighbours = append(k.Neighbours, n)
		}
	}
	if k.FDB, err = r.FDB(link.Attrs().Index); err != nil {
		return Kernel{}, err
	}
	family := unix.AF_INET
	if ipv6 {
		family = unix.AF_INET6
	}
	routes, err := nh.RouteList(link, family)
	if err != nil && !errors.Is(err, netlink.ErrDumpInterrupted) {
		return Kernel{}, err
	}
	for _, r := range routes {
		if r.Protocol != unix.RTPROT_KERNEL {
			k.Routes = append(k.Routes, r)
		}
	}
	return k, nil
}

// Tail returns the last n lines of s.
func Tail(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// Tail returns the last n lines of a process's log.
func (p *Process) Tail(n int) string { return Tail(p.Log(), n) }

// HTTPGet fetches http://127.0.0.1:9742<path> from inside the host's
// namespace, where its vtepd serves metrics, health and status.
func (h *Host) HTTPGet(path string) (int, string, error) {
	client := &http.Client{
		Timeout: 5 * time.Second,
		Transport: &http.Transport{
			DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
				return DialerIn(h.NS)(ctx, addr)
			},
		},
	}
	defer client.CloseIdleConnections()
	resp, err := client.Get("http://127.0.0.1:9742" + path)
	if err != nil {
		return 0, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b), err
}
