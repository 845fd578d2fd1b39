// Package retention decides which snapshots to delete. Everything here is a pure function of
// its inputs: the caller passes the current time, so tests use a fixed clock.
package retention

import (
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// Calendar units of a lastAccessTimeout. They are fixed lengths, not calendar arithmetic:
// a year is always 365 days and a month always 30 days, whatever the date.
const (
	Minute = time.Minute
	Hour   = time.Hour
	Day    = 24 * time.Hour
	Month  = 30 * Day
	Year   = 365 * Day
)

// units in the order ParseDuration tries them: "min" and "mo" before the one-letter units
// that share their first letter.
var units = []struct {
	name string
	size time.Duration
}{
	{"min", Minute},
	{"mo", Month},
	{"y", Year},
	{"d", Day},
	{"h", Hour},
}

// UnitNames lists the accepted units, for error messages and docs.
const UnitNames = "y, mo, d, h, min"

// ParseDuration parses a lastAccessTimeout such as "7d", "1y2mo", "36h" or "90min": one or
// more <non-negative integer><unit> terms with no spaces or signs, units y (365 days),
// mo (30 days), d, h and min. Each unit may appear once, from largest to smallest.
// Errors name the offending part: an empty string, a missing number, an unknown unit
// (e.g. "w", "m", "s"), a repeated or out-of-order unit, or a total that overflows; they
// do not repeat s, so callers add it.
func ParseDuration(s string) (time.Duration, error) {
	if s == "" {
		return 0, fmt.Errorf("empty duration (want e.g. 7d, 1y2mo, 90min; units: %s)", UnitNames)
	}
	var total time.Duration
	rest := s
	last := time.Duration(math.MaxInt64)
	for rest != "" {
		i := 0
		for i < len(rest) && rest[i] >= '0' && rest[i] <= '9' {
			i++
		}
		if i == 0 {
			return 0, fmt.Errorf("expected a number at %q (want e.g. 7d, 1y2mo, 90min)", rest)
		}
		n, err := strconv.ParseInt(rest[:i], 10, 64)
		if err != nil {
			return 0, fmt.Errorf("number %q: %w", rest[:i], err)
		}
		rest = rest[i:]
		unit, size, ok := matchUnit(rest)
		if !ok {
			bad := rest
			if j := strings.IndexAny(bad, "0123456789"); j >= 0 {
				bad = bad[:j]
			}
			if bad == "" {
				return 0, fmt.Errorf("missing unit after %d (units: %s)", n, UnitNames)
			}
			return 0, fmt.Errorf("unknown unit %q (units: %s)", bad, UnitNames)
		}
		if size >= last {
			return 0, fmt.Errorf("unit %q repeated or out of order (largest unit first)", unit)
		}
		last = size
		rest = rest[len(unit):]
		if n > int64(math.MaxInt64/size) || total > math.MaxInt64-time.Duration(n)*size {
			return 0, errors.New("duration too large")
		}
		total += time.Duration(n) * size
	}
	return total, nil
}

func matchUnit(s string) (string, time.Duration, bool) {
	for _, u := range units {
		if strings.HasPrefix(s, u.name) {
			next := s[len(u.name):]
			// "mon" or "hx" is not a unit followed by something else: reject the letters.
			if next != "" && (next[0] < '0' || next[0] > '9') {
				return "", 0, false
			}
			return u.name, u.size, true
		}
	}
	return "", 0, false
}

// FormatDuration writes d in the units ParseDuration reads, largest first, e.g. "1y2mo",
// "7d", "90min" is written "1h30min". Sub-minute remainders are dropped; zero is "0min".
func FormatDuration(d time.Duration) string {
	if d < Minute {
		return "0min"
	}
	var b strings.Builder
	for _, u := range []struct {
		name string
		size time.Duration
	}{{"y", Year}, {"mo", Month}, {"d", Day}, {"h", Hour}, {"min", Minute}} {
		if n := d / u.size; n > 0 {
			fmt.Fprintf(&b, "%d%s", n, u.name)
			d -= n * u.size
		}
	}
	return b.String()
}
