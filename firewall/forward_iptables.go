package firewall

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/coreos/go-iptables/iptables"
)

const (
	filterTable     = "filter"
	chainForward    = "FORWARD"
	chainDockerUser = "DOCKER-USER"
)

// iptablesWait bounds the wait for the xtables lock, in seconds: another
// program holding it for longer is stuck, and Reassert tries again later.
const iptablesWait = 10

// iptablesForward writes the forward rules through the iptables command,
// the world Docker's own rules live in with its default (iptables) firewall
// backend.
//
// The rules go into DOCKER-USER when Docker made it and FORWARD jumps to
// it, else into FORWARD, and at position 1 in either: Docker puts its jump
// to DOCKER-USER first in FORWARD and ends DOCKER-USER with a RETURN, so
// the top of DOCKER-USER is the one place Docker keeps for others' rules
// ahead of its own isolation drops, and the top of FORWARD is ahead of
// whatever drops it holds. vtepd usually starts before dockerd, so the
// rules start in FORWARD and move to DOCKER-USER on the next restore after
// it appears: added there first, then deleted from FORWARD, never a moment
// without them. Rules are vtepd's by their comment.
type iptablesForward struct {
	place place
	ipt   *iptables.IPTables
	path  string
	mode  string // "nf_tables" or "legacy", as `iptables --version` says
	rules []ipRule
}

// ipRule is one forward rule: its comment (what makes it vtepd's) and its
// rule specification.
type ipRule struct {
	comment string
	spec    []string
}

func (r ipRule) String() string {
	words := make([]string, len(r.spec))
	for i, w := range r.spec {
		words[i] = w
		if strings.ContainsAny(w, " \t\"") {
			words[i] = fmt.Sprintf("%q", w)
		}
	}
	return strings.Join(words, " ")
}

// ipForwardRules are flannel's ForwardRules (-s network -j ACCEPT, -d
// network -j ACCEPT), each with its comment.
func ipForwardRules(network netip.Prefix) []ipRule {
	from, to := forwardComments(network)
	n := network.String()
	return []ipRule{
		{from, []string{"-s", n, "-m", "comment", "--comment", from, "-j", "ACCEPT"}},
		{to, []string{"-d", n, "-m", "comment", "--comment", to, "-j", "ACCEPT"}},
	}
}

func newIPTablesForward(p place, cmd string, network netip.Prefix) (*iptablesForward, error) {
	path, err := exec.LookPath(cmd)
	if err != nil {
		return nil, fmt.Errorf("firewall: forward rules through %s: %w", cmd, err)
	}
	ipt, err := iptables.New(iptables.Path(path), iptables.Timeout(iptablesWait))
	if err != nil {
		return nil, fmt.Errorf("firewall: forward rules through %s: %w", path, err)
	}
	mode, err := iptablesMode(path)
	if err != nil {
		return nil, err
	}
	return &iptablesForward{place: p, ipt: ipt, path: path, mode: mode, rules: ipForwardRules(network)}, nil
}

// iptablesMode tells iptables-nft ("nf_tables") from iptables-legacy
// ("legacy"). Distributions install both as links to one multi-call
// program each (xtables-nft-multi, xtables-legacy-multi), so the link's
// target says which, without running anything: every program run costs
// milliseconds of a start that must take few. Where the name does not
// say, iptables --version does.
func iptablesMode(path string) (string, error) {
	if target, err := filepath.EvalSymlinks(path); err == nil {
		switch base := filepath.Base(target); {
		case strings.Contains(base, "nft"):
			return "nf_tables", nil
		case strings.Contains(base, "legacy"):
			return "legacy", nil
		}
	}
	out, err := exec.Command(path, "--version").Output()
	if err != nil {
		return "", fmt.Errorf("firewall: %s --version: %w", path, err)
	}
	if strings.Contains(string(out), "nf_tables") {
		return "nf_tables", nil
	}
	return "legacy", nil
}

func (b *iptablesForward) describe() string {
	variant := "iptables-legacy"
	if b.mode == "nf_tables" {
		variant = "iptables-nft"
	}
	return fmt.Sprintf("%s (%s)", variant, b.path)
}

// ipLayout is the filter table as far as the forward rules care: where
// they belong (target), the other chain they may linger in (other, empty
// when there is none), and the listings of both.
type ipLayout struct {
	target, other string
	lines         map[string][]string
}

func (b *iptablesForward) read() (ipLayout, error) {
	chains, err := b.listFilter()
	if err != nil {
		return ipLayout{}, err
	}
	fwd := chains[chainForward]
	l := ipLayout{target: chainForward, lines: map[string][]string{chainForward: fwd}}
	du, ok := chains[chainDockerUser]
	if !ok {
		return l, nil
	}
	l.lines[chainDockerUser] = du
	l.other = chainDockerUser
	// A DOCKER-USER that FORWARD does not jump to (Docker half-way through
	// setting up) sees no packet; the rules stay in FORWARD until it does.
	if slices.ContainsFunc(fwd, func(s string) bool {
		return strings.HasPrefix(s, "-A "+chainForward+" ") && strings.HasSuffix(s, " -j "+chainDockerUser)
	}) {
		l.target, l.other = chainDockerUser, chainForward
	}
	return l, nil
}

// listFilter lists the filter table once (iptables -S), by chain: what
// ListChains and a List per chain would give, in one program run instead
// of three. Each chain's lines are those -S prints for it alone: its -P or
// -N line, then its rules.
func (b *iptablesForward) listFilter() (map[string][]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), iptablesWait*time.Second)
	defer cancel()
	out, err := exec.CommandContext(ctx, b.path, "-t", filterTable, "-S").Output()
	if err != nil {
		var ee *exec.ExitError
		if errors.As(err, &ee) && len(ee.Stderr) > 0 {
			err = fmt.Errorf("%w: %s", err, bytes.TrimSpace(ee.Stderr))
		}
		return nil, fmt.Errorf("firewall: list the filter table (%s -t filter -S): %w", b.path, err)
	}
	chains := map[string][]string{}
	for _, line := range strings.Split(strings.TrimRight(string(out), "\n"), "\n") {
		f := strings.Fields(line)
		if len(f) < 2 || f[0] != "-P" && f[0] != "-N" && f[0] != "-A" {
			continue
		}
		chains[f[1]] = append(chains[f[1]], line)
	}
	if _, ok := chains[chainForward]; !ok {
		return nil, fmt.Errorf("firewall: %s -t filter -S lists no %s chain", b.path, chainForward)
	}
	return chains, nil
}

// count says how many times r is in chain, by its comment: iptables lists
// the rest of a rule in its own words, which vary between versions.
func (l ipLayout) count(chain string, r ipRule) int {
	n := 0
	for _, s := range l.lines[chain] {
		if strings.HasPrefix(s, "-A "+chain+" ") && strings.Contains(s, `--comment "`+r.comment+`"`) &&
			strings.HasSuffix(s, " -j ACCEPT") {
			n++
		}
	}
	return n
}

func (l ipLayout) missing(rules []ipRule) []string {
	var m []string
	for _, r := range rules {
		if l.count(l.target, r) == 0 {
			m = append(m, "iptables filter "+l.target+": "+r.String())
		}
	}
	for _, r := range rules {
		if l.other != "" && l.count(l.other, r) > 0 {
			m = append(m, "iptables filter "+l.other+": "+r.String()+" (belongs in "+l.target+")")
		}
	}
	return m
}

// inLayout runs fn on the filter table as it is now, in the place.
func (b *iptablesForward) inLayout(fn func(l ipLayout) ([]string, error)) (words []string, err error) {
	err = b.place.do(func() error {
		l, err := b.read()
		if err != nil {
			return err
		}
		words, err = fn(l)
		return err
	})
	return words, err
}

func (b *iptablesForward) check() ([]string, error) {
	return b.inLayout(func(l ipLayout) ([]string, error) { return l.missing(b.rules), nil })
}

func (b *iptablesForward) restore() ([]string, error) {
	return b.inLayout(func(l ipLayout) ([]string, error) {
		// Backwards, each at position 1: they end up in their own order.
		for i := len(b.rules) - 1; i >= 0; i-- {
			r := b.rules[i]
			if l.count(l.target, r) > 0 {
				continue
			}
			if err := b.ipt.Insert(filterTable, l.target, 1, r.spec...); err != nil {
				return nil, fmt.Errorf("firewall: ensure forward rules in %s: %w", l.target, err)
			}
		}
		// Out of the other chain only now: never a moment without them.
		if _, err := b.deleteAll(l, l.other); err != nil {
			return nil, fmt.Errorf("firewall: move forward rules from %s to %s: %w", l.other, l.target, err)
		}
		return l.missing(b.rules), nil // l is from before: what was fixed
	})
}

func (b *iptablesForward) remove() ([]string, error) {
	return b.inLayout(func(l ipLayout) ([]string, error) {
		var removed []string
		for _, chain := range []string{chainForward, chainDockerUser} {
			got, err := b.deleteAll(l, chain)
			removed = append(removed, got...)
			if err != nil {
				return removed, fmt.Errorf("firewall: remove forward rules from %s: %w", chain, err)
			}
		}
		return removed, nil
	})
}

// deleteAll deletes every copy of the rules from chain.
func (b *iptablesForward) deleteAll(l ipLayout, chain string) (deleted []string, err error) {
	for _, r := range b.rules {
		for n := l.count(chain, r); n > 0; n-- {
			err := b.ipt.Delete(filterTable, chain, r.spec...)
			var e *iptables.Error
			if errors.As(err, &e) && e.IsNotExist() {
				break // someone else was quicker
			}
			if err != nil {
				return deleted, err
			}
			deleted = append(deleted, "iptables filter "+chain+": "+r.String())
		}
	}
	return deleted, nil
}
