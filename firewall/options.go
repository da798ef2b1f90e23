package firewall

import (
	"errors"
	"fmt"
	"net/netip"
	"runtime"

	"github.com/google/nftables"
	"github.com/vishvananda/netns"
)

// Backend says how Forward writes its rules.
type Backend int

const (
	// BackendAuto uses iptables for the iptables chains when an iptables
	// command is installed, plus nftables for the native nftables forward
	// chains beside them; nftables alone when there is no iptables command.
	BackendAuto Backend = iota
	// BackendIPTables uses the iptables command only.
	BackendIPTables
	// BackendNFTables uses nftables only, for every forward chain there is,
	// including those iptables-nft made.
	BackendNFTables
)

func (b Backend) String() string {
	switch b {
	case BackendAuto:
		return "auto"
	case BackendIPTables:
		return "iptables"
	case BackendNFTables:
		return "nftables"
	}
	return fmt.Sprintf("Backend(%d)", int(b))
}

// Option adjusts NewMasquerade and NewForward.
type Option func(*config)

type config struct {
	netnsPath   string
	backend     Backend
	iptablesCmd string
}

// InNetNS aims the rules at the network namespace bound at path (for example
// /run/netns/NAME) instead of the calling process's. It is for tests and
// tools that drive a namespace from outside; vtepd itself runs inside the
// namespace it serves.
func InNetNS(path string) Option { return func(c *config) { c.netnsPath = path } }

// WithBackend forces Forward's backend. Masquerade ignores it: it always
// uses nftables.
func WithBackend(b Backend) Option { return func(c *config) { c.backend = b } }

// WithIPTablesCommand names the iptables command Forward runs (default
// "iptables", the one Docker runs too); "iptables-legacy" and "iptables-nft"
// pick a variant where both are installed.
func WithIPTablesCommand(name string) Option { return func(c *config) { c.iptablesCmd = name } }

func newConfig(opts []Option) config {
	c := config{iptablesCmd: "iptables"}
	for _, o := range opts {
		o(&c)
	}
	return c
}

// place is where rules go: the calling thread's network namespace, or one
// named by InNetNS, held open for as long as the rules' owner lives.
type place struct {
	ns netns.NsHandle // -1: the caller's own
}

func openPlace(c config) (place, error) {
	if c.netnsPath == "" {
		return place{ns: -1}, nil
	}
	h, err := netns.GetFromPath(c.netnsPath)
	if err != nil {
		return place{}, fmt.Errorf("firewall: open network namespace %s: %w", c.netnsPath, err)
	}
	return place{ns: h}, nil
}

// nft returns a connection whose sockets live in the place. It is not a
// lasting one: a lasting socket that gave up half-way through reading a
// batch's acknowledgements (the library does on EPERM and ENOBUFS) would
// hand their leftovers to the next request, and a socket per operation
// costs nothing at the rate rules are checked.
func (p place) nft() (*nftables.Conn, error) {
	var opts []nftables.ConnOption
	if p.ns >= 0 {
		opts = append(opts, nftables.WithNetNSFd(int(p.ns)))
	}
	c, err := nftables.New(opts...)
	if err != nil {
		return nil, fmt.Errorf("firewall: nftables: %w", err)
	}
	return c, nil
}

// do runs fn in the place. For a namespace given by InNetNS it runs on a
// fresh OS thread moved into it, because a command fn executes is forked
// from the calling thread and inherits that thread's namespace: this is how
// the iptables commands reach the namespace. The thread is never unlocked,
// so the runtime ends it with the goroutine instead of reusing a thread in
// the wrong namespace; do waits for it, so nothing outlives the call.
func (p place) do(fn func() error) error {
	if p.ns < 0 {
		return fn()
	}
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		if err := netns.Set(p.ns); err != nil {
			errc <- fmt.Errorf("firewall: enter network namespace: %w", err)
			return
		}
		errc <- fn()
	}()
	return <-errc
}

func (p place) close() error {
	if p.ns < 0 {
		return nil
	}
	return p.ns.Close()
}

var errClosed = errors.New("firewall: closed")

// ipv4Prefix checks that p is an IPv4 prefix and returns it masked, so that
// 10.5.48.1/24 (how FLANNEL_SUBNET writes a subnet) means 10.5.48.0/24.
func ipv4Prefix(what string, p netip.Prefix) (netip.Prefix, error) {
	if !p.IsValid() || !p.Addr().Is4() || p.Bits() == 0 {
		return netip.Prefix{}, fmt.Errorf("firewall: %s %v: want an IPv4 prefix longer than /0", what, p)
	}
	return p.Masked(), nil
}
