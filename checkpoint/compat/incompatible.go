package compat

import (
	"fmt"
	"sort"
	"strconv"
	"strings"
)

// Incompatible returns "" when a snapshot taken under saved can restore under here, else
// every reason, joined by "; ", e.g.
//
//	runsc version release-20250512.0 != release-20250601.0; runsc flag --platform systrap != kvm
//
// The rules: same runsc version; same effective value for each state flag (an unset flag
// has runsc's default, DefaultStateFlags, so `overlay2 = "root:self"` set on one node
// and left unset on another is the same configuration); same CPU architecture; every saved CPU feature present here (extra features
// here are fine); same GPUs, model and driver, in the same order.
func Incompatible(saved, here Tuple) string {
	var why []string
	if saved.RunscVersion != here.RunscVersion {
		why = append(why, fmt.Sprintf("runsc version %s != %s", orNone(saved.RunscVersion), orNone(here.RunscVersion)))
	}
	for _, k := range flagNames(saved.RunscFlags, here.RunscFlags) {
		a, aok := effectiveFlag(saved.RunscFlags, k)
		b, bok := effectiveFlag(here.RunscFlags, k)
		if a != b || aok != bok {
			why = append(why, fmt.Sprintf("runsc flag --%s %s != %s", k, flagValue(a, aok), flagValue(b, bok)))
		}
	}
	if saved.Arch != here.Arch {
		why = append(why, fmt.Sprintf("CPU architecture %s != %s", orNone(saved.Arch), orNone(here.Arch)))
	} else if missing := missingFeatures(saved.CPUFeatures, here.CPUFeatures); len(missing) > 0 {
		why = append(why, fmt.Sprintf("CPU features missing here: %s", strings.Join(missing, " ")))
	}
	if !saved.GPUs.Equal(here.GPUs) {
		why = append(why, fmt.Sprintf("GPUs %s != %s", orNone(saved.GPUs.String()), orNone(here.GPUs.String())))
	}
	return strings.Join(why, "; ")
}

// DefaultStateFlags are runsc's defaults of the StateFlags that have one, as the pinned
// runsc (`runsc flags`) states them. Both tuples compared have the same runsc version or
// are incompatible anyway, so one table serves both sides.
var DefaultStateFlags = map[string]string{
	"platform":           "systrap",
	"network":            "sandbox",
	"overlay2":           "root:self",
	"overlay":            "false",
	"nvproxy":            "false",
	"nvproxy-docker":     "false",
	"tpuproxy":           "false",
	"file-access":        "exclusive",
	"file-access-mounts": "shared",
	"directfs":           "true",
	"host-uds":           "none",
	"host-fifo":          "none",
}

// boolStateFlags are the StateFlags that are booleans: "--directfs" alone is "true", and
// "1", "t", "TRUE" spell the same value.
var boolStateFlags = map[string]bool{"overlay": true, "nvproxy": true, "nvproxy-docker": true, "tpuproxy": true, "directfs": true}

// effectiveFlag is the value flag k has under flags: its value (booleans normalized),
// else runsc's default; set is false only for an unset flag without a known default.
func effectiveFlag(flags map[string]string, k string) (value string, set bool) {
	v, ok := flags[k]
	if !ok {
		v, ok = DefaultStateFlags[k]
		return v, ok
	}
	if boolStateFlags[k] {
		if v == "" {
			return "true", true
		}
		if b, err := strconv.ParseBool(v); err == nil {
			return strconv.FormatBool(b), true
		}
	}
	return v, true
}

func orNone(s string) string {
	if s == "" {
		return "(none)"
	}
	return s
}

func flagValue(v string, set bool) string {
	switch {
	case !set:
		return "(unset)"
	case v == "":
		return `""`
	}
	return v
}

// flagNames is the sorted union of both maps' keys.
func flagNames(a, b map[string]string) []string {
	seen := map[string]bool{}
	var out []string
	for _, m := range []map[string]string{a, b} {
		for k := range m {
			if !seen[k] {
				seen[k] = true
				out = append(out, k)
			}
		}
	}
	sort.Strings(out)
	return out
}

// missingFeatures returns the saved features absent from here, in saved's order.
func missingFeatures(saved, here []string) []string {
	have := make(map[string]bool, len(here))
	for _, f := range here {
		have[f] = true
	}
	var out []string
	for _, f := range saved {
		if !have[f] {
			out = append(out, f)
		}
	}
	return out
}
