package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"sort"
	"strings"
	"time"

	"github.com/vtepd/vtepd/fabric"

	"github.com/vtepd/vtepd/agent"
)

// errUnhealthy makes `vtepd status` exit 1 after printing.
var errUnhealthy = errors.New("vtepd is not healthy")

func statusCommand(args []string, stdout, stderr io.Writer) error {
	fs := newFlagSet("status", stderr)
	addr := fs.String("http-addr", agent.DefaultHTTPAddr, "where the running vtepd serves its status (its --http-addr)")
	asJSON := fs.Bool("json", false, "print the daemon's JSON as it is")
	if err := parseFlags(fs, args); err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, "http://"+*addr+"/status", nil)
	if err != nil {
		return usageError{fmt.Errorf("invalid value %q for --http-addr: %v", *addr, err)}
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return fmt.Errorf("no vtepd answers on %s (is it running, with this --http-addr?): %w", *addr, err)
	}
	defer resp.Body.Close()
	body, err := io.ReadAll(resp.Body)
	if err != nil {
		return fmt.Errorf("reading the status from %s: %w", *addr, err)
	}
	var s agent.Status
	if err := json.Unmarshal(body, &s); err != nil {
		return fmt.Errorf("status from %s is not vtepd's: %w", *addr, err)
	}
	if *asJSON {
		stdout.Write(body)
	} else {
		printStatus(stdout, s)
	}
	if !s.Healthy {
		return errUnhealthy
	}
	return nil
}

func printStatus(w io.Writer, s agent.Status) {
	state := "healthy"
	if !s.Healthy {
		state = "UNHEALTHY: " + strings.Join(s.Reasons, "; ")
	}
	fmt.Fprintf(w, "vtepd %s, up %s, %s\n", s.Version, time.Since(s.Started).Round(time.Second), state)
	for _, n := range s.Notes {
		fmt.Fprintf(w, "note        %s\n", n)
	}
	if s.Network != "" {
		fmt.Fprintf(w, "network     %s\n", s.Network)
	}
	if s.IPv6Network != "" {
		fmt.Fprintf(w, "network     %s\n", s.IPv6Network)
	}
	if l := s.Lease; l != nil {
		var parts []string
		if l.Subnet != "" {
			parts = append(parts, fmt.Sprintf("%s via %s (%s)", l.Subnet, l.PublicIP, l.VtepMAC))
		}
		if l.IPv6Subnet != "" {
			parts = append(parts, fmt.Sprintf("%s via %s (%s)", l.IPv6Subnet, l.PublicIPv6, l.VtepMACv6))
		}
		fmt.Fprintf(w, "own lease   %s, expires in %s\n", strings.Join(parts, ", "),
			(time.Duration(l.ExpiresIn) * time.Second).Round(time.Second))
	}
	if t := s.Leases; t != nil {
		watch := "up"
		if !t.Watching {
			watch = "DOWN (answering from the table)"
		}
		fmt.Fprintf(w, "leases      %d admitted, %d rejected; %d invalid values and %d conflicts seen\n", t.Admitted, t.Rejected, t.Invalid, t.Conflicts)
		fmt.Fprintf(w, "etcd watch  %s; %d restarts, %d re-lists\n", watch, t.WatchRestarts, t.Relists)
	}
	for _, f := range s.Families {
		if d := f.Device; d != nil {
			fmt.Fprintf(w, "%-4s device %s (index %d, mac %s, mtu %d), %d permanent neighbours\n", f.Family, d.Name, d.Index, d.MAC, d.MTU, f.Permanent)
		}
		if len(f.Entries) > 0 {
			fmt.Fprintf(w, "%-4s entries %s\n", f.Family, counts(f.Entries))
		}
		for _, kind := range []string{"L3", "L2"} {
			if m, ok := f.Misses[kind]; ok {
				u := map[string]int{}
				for k, v := range m {
					u[k] = int(v)
				}
				fmt.Fprintf(w, "%-4s %s misses %s\n", f.Family, kind, counts(u))
			}
		}
		if len(f.Writes) > 0 {
			var parts []string
			for _, op := range fabric.Ops() {
				st := f.Writes[op.String()]
				parts = append(parts, fmt.Sprintf("%s %d (%d failed, %d table full)", op, st.Writes, st.Errors, st.TableFull))
			}
			fmt.Fprintf(w, "%-4s writes %s\n", f.Family, strings.Join(parts, ", "))
		}
	}
	if n := s.Netlink; n != nil {
		fmt.Fprintf(w, "netlink     %d overflows, %d sweeps answered %d; %d malformed, %d foreign\n", n.Overflows, n.Sweeps, n.Swept, n.Malformed, n.Foreign)
	}
	if f := s.Firewall; f != nil {
		masq := "off"
		if f.IPMasq {
			masq = "on (nftables table ip " + f.MasqTable + ")"
		}
		fmt.Fprintf(w, "firewall    forward rules %s; ip-masq %s\n", f.Forward, masq)
	}
}

// counts renders a map of counts as "a 1, b 2", sorted by name.
func counts(m map[string]int) string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	parts := make([]string, 0, len(keys))
	for _, k := range keys {
		parts = append(parts, fmt.Sprintf("%s %d", k, m[k]))
	}
	return strings.Join(parts, ", ")
}
