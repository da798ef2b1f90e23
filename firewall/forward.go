package firewall

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
	"time"

	"go.uber.org/zap"
)

// Forward keeps the rules that let the overlay network be forwarded in
// both directions whatever the forward policy is (--forward-rules). Its
// methods are safe for concurrent use.
type Forward struct {
	log      *zap.Logger
	place    place
	network  netip.Prefix
	backends []forwardBackend

	guard // over every kernel operation
}

// forwardBackend is one packet-filter world Forward writes to. check and
// restore word what is missing the same way; restore returns what it found
// and fixed.
type forwardBackend interface {
	describe() string
	check() ([]string, error)
	restore() ([]string, error)
	remove() ([]string, error)
}

// forwardComments mark vtepd's forward rules, in iptables and nftables
// alike. They name the network: two vtepds for two overlays may share a
// namespace, and each removes only its own.
func forwardComments(network netip.Prefix) (from, to string) {
	return "vtepd: forward from " + network.String(), "vtepd: forward to " + network.String()
}

// NewForward picks how the forward rules for network are written, says which
// and why in the log, and writes nothing; Ensure does.
//
// By default (BackendAuto): with an iptables command, iptables for the
// filter table's FORWARD or DOCKER-USER chain, where Docker's rules are,
// through the same command Docker runs, plus nftables for the native
// nftables forward chains beside them (leaving alone the tables
// iptables-nft manages); without one, nftables alone. See the package
// documentation for why both.
func NewForward(log *zap.Logger, network netip.Prefix, opts ...Option) (*Forward, error) {
	network, err := ipv4Prefix("network", network)
	if err != nil {
		return nil, err
	}
	cfg := newConfig(opts)
	p, err := openPlace(cfg)
	if err != nil {
		return nil, err
	}
	f := &Forward{log: log, place: p, network: network}
	why, err := f.pick(cfg)
	if err != nil {
		p.close()
		return nil, err
	}
	log.Info("forward rules backend chosen", zap.String("backend", f.Backend()), zap.String("why", why),
		zap.Stringer("network", network))
	return f, nil
}

func (f *Forward) pick(cfg config) (why string, err error) {
	switch cfg.backend {
	case BackendIPTables:
		ipt, err := newIPTablesForward(f.place, cfg.iptablesCmd, f.network)
		if err != nil {
			return "", err
		}
		f.backends = []forwardBackend{ipt}
		return "iptables asked for", nil
	case BackendNFTables:
		nft, err := newNFTForward(f.log, f.place, f.network, nil)
		if err != nil {
			return "", err
		}
		f.backends = []forwardBackend{nft}
		return "nftables asked for", nil
	case BackendAuto:
	default:
		return "", fmt.Errorf("firewall: unknown backend %v", cfg.backend)
	}
	ipt, err := newIPTablesForward(f.place, cfg.iptablesCmd, f.network)
	if errors.Is(err, exec.ErrNotFound) {
		nft, err := newNFTForward(f.log, f.place, f.network, nil)
		if err != nil {
			return "", err
		}
		f.backends = []forwardBackend{nft}
		return fmt.Sprintf("no %s command: an nftables-only host", cfg.iptablesCmd), nil
	}
	if err != nil {
		return "", err
	}
	var skip func(family, table string) bool
	if ipt.mode == "nf_tables" {
		skip = managedByIPTablesNFT
	}
	nft, err := newNFTForward(f.log, f.place, f.network, skip)
	if err != nil {
		return "", err
	}
	if _, err := nft.nft.ListTables(); err != nil {
		// A kernel without nf_tables: iptables-legacy is all there is, and a
		// side that fails every check would only make noise.
		f.backends = []forwardBackend{ipt}
		return fmt.Sprintf("%s is installed; nftables cannot be read here (%v)", cfg.iptablesCmd, err), nil
	}
	f.backends = []forwardBackend{ipt, nft}
	return fmt.Sprintf("%s is installed: Docker's chains are there; native nftables forward chains get the rules too, "+
		"as their drops are not overridden by an iptables accept", cfg.iptablesCmd), nil
}

// Backend describes the backends in use, for logs and status pages.
func (f *Forward) Backend() string {
	var s []string
	for _, b := range f.backends {
		s = append(s, b.describe())
	}
	return strings.Join(s, " + ")
}

// Ensure installs whatever rules are missing, moves them where they belong
// (into DOCKER-USER once Docker made it), and logs what it changed.
func (f *Forward) Ensure() error {
	fixed, err := f.arm(true, f.restore)
	if len(fixed) > 0 {
		f.log.Info("forward rules installed", zap.Stringer("network", f.network), zap.Strings("missing", fixed))
	}
	return err
}

// Check lists what is missing or misplaced, from listings alone; nothing
// means every rule is where it belongs. It is cheap enough to run every few
// seconds: a few iptables listings and nftables dumps.
func (f *Forward) Check() ([]string, error) { return f.run(f.check) }

// Reassert checks the rules every period until ctx ends, and restores them when
// something flushed them (Docker does when it restarts, firewalld on every
// reload) or when Docker's DOCKER-USER chain appeared and they belong
// there. It logs once per restore, with what was missing. It acts only
// between Ensure and Remove. A period of zero or less means 10s.
func (f *Forward) Reassert(ctx context.Context, every time.Duration) {
	reassert(ctx, f.log, "forward", every, f.whileArmed(f.check), f.whileArmed(f.restore))
}

// Remove deletes vtepd's forward rules for this network, found by their
// comment, wherever they are; other rules stay. Removing what is not there
// is not an error.
func (f *Forward) Remove() error {
	removed, err := f.arm(false, func() ([]string, error) { return f.each(forwardBackend.remove) })
	if len(removed) > 0 {
		f.log.Info("forward rules removed", zap.Stringer("network", f.network), zap.Strings("removed", removed))
	}
	return err
}

// Close releases the namespace. It leaves the rules in place: a restarted
// vtepd finds them and keeps them, and forwarding never stops.
func (f *Forward) Close() error { return f.close(f.place.close) }

func (f *Forward) check() ([]string, error)   { return f.each(forwardBackend.check) }
func (f *Forward) restore() ([]string, error) { return f.each(forwardBackend.restore) }

// each runs fn on every backend, all of them even when one fails: rules
// that can go in, should. The caller holds the guard.
func (f *Forward) each(fn func(forwardBackend) ([]string, error)) ([]string, error) {
	var all []string
	var errs []error
	for _, b := range f.backends {
		got, err := fn(b)
		all = append(all, got...)
		errs = append(errs, err)
	}
	return all, errors.Join(errs...)
}
