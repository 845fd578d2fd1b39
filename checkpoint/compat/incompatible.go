package compat

import (
	"fmt"
	"sort"
	"strings"
)

// Incompatible returns "" when a snapshot taken under saved can restore under here, else
// every reason, joined by "; ", e.g.
//
//	runsc version release-20250512.0 != release-20250601.0; runsc flag --platform systrap != kvm
//
// The rules: same runsc version; same value for each state flag (unset counts as a value:
// the default); same CPU architecture; every saved CPU feature present here (extra features
// here are fine); same GPUs, model and driver, in the same order.
func Incompatible(saved, here Tuple) string {
	var why []string
	if saved.RunscVersion != here.RunscVersion {
		why = append(why, fmt.Sprintf("runsc version %s != %s", orNone(saved.RunscVersion), orNone(here.RunscVersion)))
	}
	for _, k := range flagNames(saved.RunscFlags, here.RunscFlags) {
		a, aok := saved.RunscFlags[k]
		b, bok := here.RunscFlags[k]
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
