package policy

import (
	"fmt"
	"strings"

	"k8s.io/apimachinery/pkg/labels"
)

// Match is the outcome of matching one pod.
type Match struct {
	// Entry is the chosen policy; nil when none matches.
	*Entry
	// Others are further matching policies of the namespace, not chosen, in precedence order.
	Others []*Entry
}

// Found reports whether a policy matched.
func (m Match) Found() bool { return m.Entry != nil }

// Warning is "" unless several policies matched; then it names them all and the one chosen.
func (m Match) Warning() string {
	if len(m.Others) == 0 {
		return ""
	}
	names := []string{m.Policy.Name}
	for _, o := range m.Others {
		names = append(names, o.Policy.Name)
	}
	return fmt.Sprintf("pod matches %d PodSnapshotPolicies in namespace %s (%s); using %s: the oldest creationTimestamp, then name",
		len(names), m.Policy.Namespace, strings.Join(names, ", "), m.Policy.Name)
}

// Match returns the policy of namespace whose selector matches podLabels. A policy of
// another namespace never matches. When several match, the choice is deterministic: the
// oldest metadata.creationTimestamp (unset counts as oldest), then the smallest name; the
// others are in Match.Others and Match.Warning describes the ambiguity.
func (s *Set) Match(namespace string, podLabels map[string]string) Match {
	var m Match
	set := labels.Set(podLabels)
	for _, e := range s.Policies {
		if e.Policy.Namespace != namespace || !e.Selector.Matches(set) {
			continue
		}
		if m.Entry == nil {
			m.Entry = e
		} else {
			m.Others = append(m.Others, e)
		}
	}
	return m
}
