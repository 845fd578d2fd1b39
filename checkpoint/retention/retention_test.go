package retention

import (
	"reflect"
	"strings"
	"testing"
	"time"
)

func TestParseDuration(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want time.Duration
	}{
		{"7d", 7 * Day},
		{"1y", 365 * Day},
		{"1y2mo", 365*Day + 60*Day},
		{"90min", 90 * time.Minute},
		{"36h", 36 * time.Hour},
		{"1d12h30min", Day + 12*time.Hour + 30*time.Minute},
		{"0d", 0},
	} {
		got, err := ParseDuration(tc.in)
		if err != nil || got != tc.want {
			t.Errorf("ParseDuration(%q) = %v, %v; want %v", tc.in, got, err, tc.want)
		}
	}
}

func TestParseDurationErrors(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"", "empty duration"},
		{"2w", `unknown unit "w" (units: y, mo, d, h, min)`},
		{"5m", `unknown unit "m"`},
		{"30s", `unknown unit "s"`},
		{"7", "missing unit after 7"},
		{"d", `expected a number at "d"`},
		{"-1d", `expected a number at "-1d"`},
		{"1d 2h", `unknown unit "d "`},
		{"1h1d", `unit "d" repeated or out of order`},
		{"1d1d", `unit "d" repeated or out of order`},
		{"1mon", `unknown unit "mon"`},
		{"99999999999y", "duration too large"},
	} {
		_, err := ParseDuration(tc.in)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("ParseDuration(%q) error = %v; want it to contain %q", tc.in, err, tc.want)
		}
	}
}

func TestFormatDuration(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0:                     "0min",
		90 * time.Minute:      "1h30min",
		7 * Day:               "7d",
		Year + 2*Month + Hour: "1y2mo1h",
	} {
		if got := FormatDuration(d); got != want {
			t.Errorf("FormatDuration(%v) = %q; want %q", d, got, want)
		}
		if back, err := ParseDuration(FormatDuration(d)); err != nil || back != d {
			t.Errorf("round trip of %v: %v, %v", d, back, err)
		}
	}
}

// now is the fixed clock of the retention tests.
var now = time.Date(2026, 3, 1, 12, 0, 0, 0, time.UTC)

func ago(d time.Duration) time.Time { return now.Add(-d) }

func ids(ds []Deletion) []string {
	var out []string
	for _, d := range ds {
		out = append(out, d.ID)
	}
	return out
}

func TestExpired(t *testing.T) {
	if Expired(ago(8*Day), 0, now) {
		t.Error("timeout 0 must keep forever")
	}
	if Expired(ago(7*Day), 7*Day, now) {
		t.Error("exactly the timeout old must be kept")
	}
	if !Expired(ago(7*Day+time.Second), 7*Day, now) {
		t.Error("a second past the timeout must expire")
	}
}

func TestPlanLastAccessTimeout(t *testing.T) {
	snaps := []Snapshot{
		{ID: "fresh", CreatedAt: ago(30 * Day), LastAccessTime: ago(1 * Day)},
		{ID: "stale", CreatedAt: ago(30 * Day), LastAccessTime: ago(8 * Day)},
		{ID: "never-used-old", CreatedAt: ago(10 * Day)},
		{ID: "never-used-new", CreatedAt: ago(2 * Day)},
	}
	got := Plan(snaps, Rules{LastAccessTimeout: 7 * Day}, now)
	if want := []string{"stale", "never-used-old"}; !reflect.DeepEqual(ids(got), want) {
		t.Fatalf("Plan = %v; want %v", ids(got), want)
	}
	if !strings.Contains(got[0].Reason, "longer than lastAccessTimeout 7d") {
		t.Errorf("reason = %q", got[1].Reason)
	}
	if got := Plan(snaps, Rules{}, now); len(got) != 0 {
		t.Errorf("no rules: Plan = %v; want nothing", ids(got))
	}
}

func TestPlanMaxPerGroup(t *testing.T) {
	snaps := []Snapshot{
		{ID: "a3", Group: "app=a", CreatedAt: ago(1 * time.Hour)},
		{ID: "a1", Group: "app=a", CreatedAt: ago(3 * time.Hour)},
		{ID: "a2", Group: "app=a", CreatedAt: ago(2 * time.Hour)},
		{ID: "a0", Group: "app=a", CreatedAt: ago(4 * time.Hour)},
		{ID: "b1", Group: "app=b", CreatedAt: ago(5 * time.Hour)},
	}
	got := Plan(snaps, Rules{MaxPerGroup: 2}, now)
	if want := []string{"a0", "a1"}; !reflect.DeepEqual(ids(got), want) {
		t.Fatalf("Plan = %v; want oldest first %v", ids(got), want)
	}
	if !strings.Contains(got[0].Reason, `group "app=a" holds 4 snapshots, more than maxSnapshotCountPerGroup 2`) {
		t.Errorf("reason = %q", got[0].Reason)
	}
	if got := Plan(snaps, Rules{MaxPerGroup: 0}, now); len(got) != 0 {
		t.Errorf("0 = unlimited, got %v", ids(got))
	}
	// Same creation time: ID breaks the tie, so the choice is deterministic.
	tie := []Snapshot{{ID: "y", CreatedAt: now}, {ID: "x", CreatedAt: now}}
	if got := ids(Plan(tie, Rules{MaxPerGroup: 1}, now)); !reflect.DeepEqual(got, []string{"x"}) {
		t.Errorf("tie: Plan = %v; want [x]", got)
	}
}

func TestPlanBoth(t *testing.T) {
	// Expired snapshots go first and do not count against the group limit.
	snaps := []Snapshot{
		{ID: "old", CreatedAt: ago(40 * Day)},
		{ID: "n1", CreatedAt: ago(3 * Day)},
		{ID: "n2", CreatedAt: ago(2 * Day)},
		{ID: "n3", CreatedAt: ago(1 * Day)},
	}
	got := Plan(snaps, Rules{LastAccessTimeout: Month, MaxPerGroup: 2}, now)
	if want := []string{"old", "n1"}; !reflect.DeepEqual(ids(got), want) {
		t.Fatalf("Plan = %v; want %v", ids(got), want)
	}
}
