package main

import (
	"fmt"
	"math"
	"sort"
)

// dist is a set of samples (one per run) summarized as median [min–max].
type dist []float64

func (d dist) sorted() []float64 {
	s := append([]float64(nil), d...)
	sort.Float64s(s)
	return s
}

func (d dist) median() float64 {
	if len(d) == 0 {
		return math.NaN()
	}
	s := d.sorted()
	if len(s)%2 == 1 {
		return s[len(s)/2]
	}
	return (s[len(s)/2-1] + s[len(s)/2]) / 2
}

func (d dist) min() float64 { return d.sorted()[0] }
func (d dist) max() float64 { s := d.sorted(); return s[len(s)-1] }

// quantile of the samples (nearest rank).
func (d dist) quantile(q float64) float64 {
	if len(d) == 0 {
		return math.NaN()
	}
	s := d.sorted()
	i := int(math.Ceil(q*float64(len(s)))) - 1
	if i < 0 {
		i = 0
	}
	return s[i]
}

// fmtNum prints a duration-like number with 3 significant digits.
func fmtNum(v float64) string {
	switch {
	case math.IsNaN(v):
		return "—"
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	case v >= 1:
		return fmt.Sprintf("%.2f", v)
	default:
		return fmt.Sprintf("%.3f", v)
	}
}

// spread prints median [min–max].
func (d dist) spread() string {
	if len(d) == 0 {
		return "—"
	}
	if len(d) == 1 {
		return fmtNum(d[0]) + " (1 run)"
	}
	return fmt.Sprintf("%s [%s–%s]", fmtNum(d.median()), fmtNum(d.min()), fmtNum(d.max()))
}
