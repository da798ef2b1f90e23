package store

import (
	"context"
	"strings"
	"sync"
	"testing"
	"time"
)

// TestFollowConfig: every change of the network config while vtepd runs is
// reported once, with the fields that differ and whether it takes a
// restart; an invalid or deleted config is reported as such; the running
// config again is reported as no difference.
func TestFollowConfig(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	const prefix = "/follow"
	key := ConfigKey(prefix)
	runningJSON := `{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":1}}`
	mustPut(t, c, key, runningJSON)
	running, err := ParseConfig(key, []byte(runningJSON))
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	var got []ConfigChange
	ctx, cancel := context.WithCancel(testCtx(t))
	done := make(chan error, 1)
	go func() {
		done <- FollowConfig(ctx, c, prefix, running, func(ch ConfigChange) {
			mu.Lock()
			got = append(got, ch)
			mu.Unlock()
		})
	}()
	next := func(what string) ConfigChange {
		t.Helper()
		var ch ConfigChange
		eventually(t, 5*time.Second, func() bool {
			mu.Lock()
			defer mu.Unlock()
			if len(got) == 0 {
				return false
			}
			ch, got = got[0], got[1:]
			return true
		}, "no report after %s", what)
		return ch
	}

	mustPut(t, c, key, `{"Network":"10.5.0.0/16","SubnetLen":24,"Backend":{"Type":"vxlan","VNI":2}}`)
	if ch := next("another VNI"); ch.Err != nil || !ch.NeedsRestart || len(ch.Differences) != 1 || ch.Differences[0] != "Backend.VNI 1 → 2" {
		t.Errorf("another VNI: %+v", ch)
	}
	mustPut(t, c, key, `{"Network":"10.5.0.0/16",`)
	if ch := next("invalid JSON"); ch.Err == nil || !strings.Contains(ch.Err.Error(), key) {
		t.Errorf("invalid JSON: %+v, want an error naming %s", ch, key)
	}
	mustPut(t, c, key, `{"Network":"10.5.0.0/16","SubnetLen":24,"SubnetMax":"10.5.200.0","Backend":{"Type":"vxlan","VNI":1}}`)
	if ch := next("a smaller range"); ch.Err != nil || ch.NeedsRestart || len(ch.Differences) != 1 || !strings.HasPrefix(ch.Differences[0], "SubnetMax ") {
		t.Errorf("a smaller range: %+v, want SubnetMax alone, no restart", ch)
	}
	mustPut(t, c, key, runningJSON)
	if ch := next("the running config again"); ch.Err != nil || len(ch.Differences) != 0 {
		t.Errorf("the running config again: %+v", ch)
	}
	mustPut(t, c, key, runningJSON) // the same again: nothing to say
	mustDelete(t, c, key)
	if ch := next("a delete"); ch.Err == nil || ch.Err.Error() != "deleted" {
		t.Errorf("a delete: %+v", ch)
	}
	mu.Lock()
	if len(got) != 0 {
		t.Errorf("reports left: %+v", got)
	}
	mu.Unlock()
	cancel()
	if err := <-done; err != context.Canceled {
		t.Errorf("FollowConfig returned %v", err)
	}
}

func TestConfigDiff(t *testing.T) {
	a, _ := ParseConfig("k", []byte(`{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`))
	b, _ := ParseConfig("k", []byte(`{"Network":"10.6.0.0/16","Backend":{"Type":"vxlan","Port":4789}}`))
	d := a.Diff(b)
	want := []string{"Network 10.5.0.0/16 → 10.6.0.0/16", "SubnetMin 10.5.1.0 → 10.6.1.0", "SubnetMax 10.5.255.0 → 10.6.255.0", "Backend.Port 8472 → 4789"}
	if strings.Join(d, "; ") != strings.Join(want, "; ") {
		t.Errorf("Diff = %q, want %q", d, want)
	}
	if d := a.Diff(a); len(d) != 0 {
		t.Errorf("Diff with itself = %q", d)
	}
}

// TestConfigDiffEveryField: Diff names each field of a dual-stack config
// and of the backend, in the config's order; warnings are no difference.
func TestConfigDiffEveryField(t *testing.T) {
	a := mustParseConfig(t, `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`)
	b := mustParseConfig(t, `{"EnableIPv4":false,"EnableIPv6":true,"Network":"10.9.0.0/16","IPv6Network":"fd00:10::/48",
		"Backend":{"Type":"vxlan","MTU":1400,"GBP":true,"Learning":true,"DirectRouting":true,"MacPrefix":"0E-2A"}}`)
	want := []string{
		"EnableIPv4 true → false", "EnableIPv6 false → true",
		"Network 10.5.0.0/16 → none", "SubnetLen 24 → 0", "SubnetMin 10.5.1.0 → none", "SubnetMax 10.5.255.0 → none",
		"IPv6Network none → fd00:10::/48", "IPv6SubnetLen 0 → 64", "IPv6SubnetMin none → fd00:10:0:1::", "IPv6SubnetMax none → fd00:10:0:ffff::",
		"Backend.MTU 0 → 1400", "Backend.GBP false → true", "Backend.Learning false → true", "Backend.DirectRouting false → true",
	}
	if d := a.Diff(b); strings.Join(d, "; ") != strings.Join(want, "; ") {
		t.Errorf("Diff =\n  %s\nwant\n  %s", strings.Join(d, "\n  "), strings.Join(want, "\n  "))
	}
	if len(b.Warnings) == 0 {
		t.Fatal("no warning about the ignored Network and MacPrefix")
	}
	if d := b.Diff(withoutWarnings(b)); len(d) != 0 {
		t.Errorf("warnings make a difference: %q", d)
	}
}

// TestFollowConfigIPv6: the IPv6 bounds change the subnets acquired from
// now on only, like the IPv4 ones; anything else of the IPv6 family or the
// backend takes a restart.
func TestFollowConfigIPv6(t *testing.T) {
	t.Parallel()
	c := startEtcd(t)
	const prefix = "/follow6"
	key := ConfigKey(prefix)
	runningJSON := `{"EnableIPv6":true,"Network":"10.5.0.0/16","IPv6Network":"fd00:10::/48","Backend":{"Type":"vxlan"}}`
	mustPut(t, c, key, runningJSON)
	running := mustParseConfig(t, runningJSON)
	got := make(chan ConfigChange, 10)
	ctx, cancel := context.WithCancel(testCtx(t))
	defer cancel()
	go FollowConfig(ctx, c, prefix, running, func(ch ConfigChange) { got <- ch })
	next := func(what string) ConfigChange {
		t.Helper()
		select {
		case ch := <-got:
			return ch
		case <-time.After(5 * time.Second):
			t.Fatalf("no report after %s", what)
			return ConfigChange{}
		}
	}
	mustPut(t, c, key, `{"EnableIPv6":true,"Network":"10.5.0.0/16","IPv6Network":"fd00:10::/48","IPv6SubnetMax":"fd00:10:0:ff::","Backend":{"Type":"vxlan"}}`)
	if ch := next("a smaller IPv6 range"); ch.Err != nil || ch.NeedsRestart || len(ch.Differences) != 1 || !strings.HasPrefix(ch.Differences[0], "IPv6SubnetMax ") {
		t.Errorf("a smaller IPv6 range: %+v, want IPv6SubnetMax alone, no restart", ch)
	}
	for what, doc := range map[string]string{
		"another IPv6 network": `{"EnableIPv6":true,"Network":"10.5.0.0/16","IPv6Network":"fd00:11::/48","Backend":{"Type":"vxlan"}}`,
		"IPv6 off":             `{"Network":"10.5.0.0/16","Backend":{"Type":"vxlan"}}`,
		"an MTU":               `{"EnableIPv6":true,"Network":"10.5.0.0/16","IPv6Network":"fd00:10::/48","Backend":{"Type":"vxlan","MTU":1400}}`,
		"direct routing":       `{"EnableIPv6":true,"Network":"10.5.0.0/16","IPv6Network":"fd00:10::/48","Backend":{"Type":"vxlan","DirectRouting":true}}`,
	} {
		mustPut(t, c, key, doc)
		if ch := next(what); ch.Err != nil || !ch.NeedsRestart {
			t.Errorf("%s: %+v, want a restart", what, ch)
		}
	}
}
