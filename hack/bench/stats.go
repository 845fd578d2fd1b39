package main

import (
	"fmt"
	"sort"
)

// Stat summarises the samples of one figure.
type Stat struct {
	N       int       `json:"n"`
	Median  float64   `json:"median"`
	Min     float64   `json:"min"`
	Max     float64   `json:"max"`
	Samples []float64 `json:"samples"`
}

func summarise(samples []float64) Stat {
	if len(samples) == 0 {
		return Stat{}
	}
	s := append([]float64(nil), samples...)
	sort.Float64s(s)
	n := len(s)
	med := s[n/2]
	if n%2 == 0 {
		med = (s[n/2-1] + s[n/2]) / 2
	}
	return Stat{N: n, Median: med, Min: s[0], Max: s[n-1], Samples: samples}
}

// Metric is one row of the results: what is measured, in which unit, how to print it.
type Metric struct {
	Key   string `json:"key"`
	Label string `json:"label"`
	Unit  string `json:"unit"`
	// Note explains what exactly the figure is.
	Note string `json:"note,omitempty"`
}

// Results collects samples by metric key and workload size (MiB; 0 for figures that do
// not depend on the size).
type Results struct {
	order   []Metric
	metrics map[string]Metric
	samples map[string]map[int][]float64
}

func newResults() *Results {
	return &Results{metrics: map[string]Metric{}, samples: map[string]map[int][]float64{}}
}

// define declares a metric; rows print in the order of definition.
func (r *Results) define(key, label, unit, note string) {
	if _, ok := r.metrics[key]; ok {
		return
	}
	m := Metric{Key: key, Label: label, Unit: unit, Note: note}
	r.metrics[key] = m
	r.order = append(r.order, m)
}

func (r *Results) add(key string, mib int, v float64) {
	if _, ok := r.metrics[key]; !ok {
		panic(fmt.Sprintf("bench: metric %q not defined", key))
	}
	if r.samples[key] == nil {
		r.samples[key] = map[int][]float64{}
	}
	r.samples[key][mib] = append(r.samples[key][mib], v)
}

func (r *Results) stat(key string, mib int) (Stat, bool) {
	s := r.samples[key][mib]
	if len(s) == 0 {
		return Stat{}, false
	}
	return summarise(s), true
}
