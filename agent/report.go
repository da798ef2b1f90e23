package agent

import (
	"context"
	"time"

	"github.com/vtepd/vtepd/miss"
	"github.com/vtepd/vtepd/store"
	"go.uber.org/zap"
)

// DefaultReportInterval is how often unusual counts are summarised.
const DefaultReportInterval = 10 * time.Second

// counts is a snapshot of the counters worth an operator's attention.
type counts struct {
	unanswered [3][]uint64 // by miss.Kind, then Outcome; Answered left at 0
	overflows  uint64
	malformed  uint64
	invalid    uint64
	conflicts  uint64
}

func snapshot(responders []*miss.Responder, l *miss.Listener, t *store.Table) counts {
	var c counts
	for _, k := range []miss.Kind{miss.L2, miss.L3} {
		c.unanswered[k] = make([]uint64, len(miss.Outcomes()))
		for _, o := range miss.Outcomes() {
			if o == miss.Answered {
				continue
			}
			for _, r := range responders {
				c.unanswered[k][o] += r.Count(k, o)
			}
		}
	}
	ls, ts := l.Stats(), t.Stats()
	c.overflows, c.malformed = ls.Overflows, ls.Malformed
	c.invalid, c.conflicts = ts.Invalid, ts.Conflicts
	return c
}

// report logs, once per interval and only when something happened, what
// went unanswered or was lost: one line however many packets it covers, so
// that a miss storm or a misconfigured peer cannot flood the log.
func report(ctx context.Context, interval time.Duration, log *zap.Logger, r []*miss.Responder, l *miss.Listener, t *store.Table) {
	if interval <= 0 {
		interval = DefaultReportInterval
	}
	tick := time.NewTicker(interval)
	defer tick.Stop()
	last := snapshot(r, l, t)
	for {
		select {
		case <-ctx.Done():
			return
		case <-tick.C:
		}
		now := snapshot(r, l, t)
		var fields []zap.Field
		for _, k := range []miss.Kind{miss.L2, miss.L3} {
			for _, o := range miss.Outcomes() {
				if d := now.unanswered[k][o] - last.unanswered[k][o]; d > 0 {
					fields = append(fields, zap.Uint64(k.String()+"_"+o.String(), d))
				}
			}
		}
		for _, f := range []struct {
			name      string
			now, last uint64
		}{
			{"netlink_overflows", now.overflows, last.overflows},
			{"malformed_messages", now.malformed, last.malformed},
			{"invalid_leases", now.invalid, last.invalid},
			{"lease_conflicts", now.conflicts, last.conflicts},
		} {
			if d := f.now - f.last; d > 0 {
				fields = append(fields, zap.Uint64(f.name, d))
			}
		}
		last = now
		if len(fields) > 0 {
			log.Info("unanswered misses and losses in the last interval", append(fields, zap.Duration("interval", interval))...)
		}
	}
}
