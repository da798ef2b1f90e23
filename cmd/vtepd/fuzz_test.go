package main

import (
	"net"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// FuzzFlagValues fuzzes the hand-written parsers of flag values, which also
// come from VTEPD_* variables: the address flag (--public-ip), the list flag
// (--etcd-endpoints, --iface) and the host:port check of --http-addr. Its
// seeds are in testdata/fuzz/FuzzFlagValues/; plain `go test` runs them,
// `make fuzz` fuzzes.
func FuzzFlagValues(f *testing.F) {
	f.Fuzz(func(t *testing.T, s string) {
		checkAddrFlag(t, s)
		checkListFlag(t, s)
		checkHostPortValue(t, s)
	})
}

// An accepted address prints as a value that sets the same address; a
// rejected one leaves the flag as it was, with an error that shows the value.
func checkAddrFlag(t *testing.T, s string) {
	t.Helper()
	before := netip.MustParseAddr("198.51.100.7")
	f := addrFlag{addr: before}
	if err := f.Set(s); err != nil {
		if f.addr != before {
			t.Errorf("addrFlag.Set(%q) failed (%v) but changed the flag to %v", s, err, f.addr)
		}
		shown := strings.Contains(err.Error(), strconv.Quote(s))
		if a, perr := netip.ParseAddr(s); perr == nil {
			shown = shown || strings.Contains(err.Error(), a.String())
		}
		if !shown {
			t.Errorf("addrFlag.Set(%q) error %q does not show the value", s, err)
		}
		return
	}
	if !f.addr.IsValid() || f.String() == "" {
		t.Fatalf("addrFlag.Set(%q) accepted it as %v", s, f.addr)
	}
	var g addrFlag
	if err := g.Set(f.String()); err != nil || g.addr != f.addr {
		t.Errorf("addrFlag.Set(%q) = %v, but Set(%q) = %v, %v", s, f.addr, f.String(), g.addr, err)
	}
}

// A list value replaces the default at the first Set and adds to what is
// there at the next; its elements are non-empty, trimmed and comma-free, and
// String() sets the same list again.
func checkListFlag(t *testing.T, s string) {
	t.Helper()
	l := listFlag{values: []string{"http://127.0.0.1:2379"}}
	if err := l.Set(s); err != nil {
		t.Fatalf("listFlag.Set(%q): %v", s, err)
	}
	for _, v := range l.values {
		if v == "" || v != strings.TrimSpace(v) || strings.Contains(v, ",") {
			t.Errorf("listFlag.Set(%q) gave element %q", s, v)
		}
	}
	first := slices.Clone(l.values)
	var again listFlag
	if err := again.Set(l.String()); err != nil || !slices.Equal(again.values, first) {
		t.Errorf("listFlag.Set(%q) = %q, but Set(String() = %q) = %q, %v", s, first, l.String(), again.values, err)
	}
	if err := l.Set(s); err != nil || !slices.Equal(l.values, append(slices.Clone(first), first...)) {
		t.Errorf("listFlag.Set(%q) twice = %q, %v; want %q twice", s, l.values, err, first)
	}
}

// An accepted --http-addr with an IP address (or no host) is one that
// net.Listen takes.
func checkHostPortValue(t *testing.T, s string) {
	t.Helper()
	if err := checkHostPort(s); err != nil {
		if err.Error() == "" {
			t.Errorf("checkHostPort(%q): empty error", s)
		}
		return
	}
	if s == "" {
		return
	}
	host, _, err := net.SplitHostPort(s)
	if err != nil {
		t.Fatalf("checkHostPort(%q) accepted what net.SplitHostPort rejects: %v", s, err)
	}
	if _, perr := netip.ParseAddr(host); host != "" && perr != nil {
		return // a name: resolving it would ask DNS
	}
	if _, err := net.ResolveTCPAddr("tcp", s); err != nil {
		t.Errorf("checkHostPort(%q) accepted what net.Listen rejects: %v", s, err)
	}
}
