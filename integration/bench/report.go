package bench

import (
	"context"
	"encoding/json"
	"fmt"
	"image/color"
	"io"
	"math"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"text/tabwriter"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/plotutil"
	"gonum.org/v1/plot/vg"
)

// Machine describes where the bench ran.
type Machine struct {
	CPUs      int               `json:"cpus"`
	CPUModel  string            `json:"cpu_model"`
	MemoryMiB int64             `json:"memory_mib"`
	Kernel    string            `json:"kernel"`
	Go        string            `json:"go"`
	Versions  map[string]string `json:"versions"`
}

func describeMachine(ctx context.Context, tools Tools) Machine {
	m := Machine{CPUs: runtime.NumCPU(), Go: runtime.Version(), Versions: map[string]string{}}
	if data, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for _, line := range strings.Split(string(data), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPUModel = strings.TrimSpace(v)
				break
			}
		}
	}
	if data, err := os.ReadFile("/proc/meminfo"); err == nil {
		var kib int64
		fmt.Sscanf(strings.TrimPrefix(strings.SplitN(string(data), "\n", 2)[0], "MemTotal:"), "%d", &kib)
		m.MemoryMiB = kib / 1024
	}
	if data, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(data))
	}
	for name, cmd := range map[string][]string{
		"runc":            {tools.Runc, "--version"},
		"ctr":             {tools.Ctr, "--version"},
		"ctr 2.4":         {filepath.Join(tools.Containerd2Dir, "ctr"), "--version"},
		"redis-server":    {tools.Redis, "--version"},
		"docker-registry": {"/usr/bin/docker-registry", "--version"},
	} {
		if out, err := run(ctx, cmd[0], cmd[1:]...); err == nil {
			m.Versions[name] = firstLine(out)
		}
	}
	return m
}

func (m Machine) String() string {
	return fmt.Sprintf("%d CPUs (%s), %d MiB, Linux %s, %s", m.CPUs, m.CPUModel, m.MemoryMiB, m.Kernel, m.Go)
}

// summarize fills in each row's medians, p95s, floor and ratios.
func summarize(res *Results) {
	for _, r := range res.Rows {
		r.Median, r.P95, r.Ratios = map[string]float64{}, map[string]float64{}, map[string]float64{}
		for key, samples := range r.Samples {
			r.Median[key] = quantile(samples, 0.5)
			r.P95[key] = quantile(samples, 0.95)
		}
		if len(r.Floor) > 0 {
			r.FloorMedian = quantile(r.Floor, 0.5)
		}
		for _, f := range res.Systems {
			if !f.Flotilla {
				continue
			}
			for _, c := range res.Systems {
				if c.Flotilla || r.Median[c.Key] == 0 {
					continue
				}
				r.Ratios[f.Key+"/"+c.Key] = r.Median[f.Key] / r.Median[c.Key]
			}
		}
	}
}

// quantile is the q-quantile of samples by the nearest-rank method.
func quantile(samples []float64, q float64) float64 {
	if len(samples) == 0 {
		return math.NaN()
	}
	s := slices.Clone(samples)
	slices.Sort(s)
	i := int(math.Ceil(q*float64(len(s)))) - 1
	return s[max(0, min(i, len(s)-1))]
}

// ratioColumns are the ratio columns of the table and bars of the chart:
// each Flotilla mode over each containerd, with the chart's labels and the
// table's short headers.
func ratioColumns(res *Results) (keys, labels, headers []string) {
	for _, f := range res.Systems {
		if !f.Flotilla {
			continue
		}
		for _, c := range res.Systems {
			if !c.Flotilla {
				keys = append(keys, f.Key+"/"+c.Key)
				labels = append(labels, f.Name+" / "+c.Name)
				headers = append(headers, f.Short+"/"+c.Short)
			}
		}
	}
	return keys, labels, headers
}

// PrintTable writes one table: workload, each system's median (p95 for
// latencies sampled ≥ 20 times), each ratio, the floor.
func PrintTable(w io.Writer, res *Results) error {
	tw := tabwriter.NewWriter(w, 0, 0, 2, ' ', tabwriter.AlignRight)
	header := []string{"workload\t", "unit\t"}
	for _, s := range res.Systems {
		header = append(header, s.Name+"\t")
	}
	keys, _, headers := ratioColumns(res)
	for _, h := range headers {
		header = append(header, h+"\t")
	}
	header = append(header, "floor\t")
	fmt.Fprintln(tw, strings.Join(header, ""))
	for _, r := range res.Rows {
		line := []string{r.Name + "\t", r.Unit + "\t"}
		for _, s := range res.Systems {
			cell := fmtValue(r.Median[s.Key])
			if n := len(r.Samples[s.Key]); n >= 20 {
				cell += " (p95 " + fmtValue(r.P95[s.Key]) + ")"
			}
			line = append(line, cell+"\t")
		}
		for _, k := range keys {
			line = append(line, fmt.Sprintf("%.2f×\t", r.Ratios[k]))
		}
		floor := "-"
		if len(r.Floor) > 0 {
			floor = fmtValue(r.FloorMedian) + " " + r.FloorName
		}
		line = append(line, floor+"\t")
		fmt.Fprintln(tw, strings.Join(line, ""))
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	fmt.Fprintf(w, "medians (p95 where ≥ 20 samples); a/b is a's median over b's (above 1: Flotilla is slower or bigger)\nmachine: %s\n", res.Machine)
	for _, s := range res.Systems {
		fmt.Fprintf(w, "%s = %s: %s\n", s.Short, s.Name, s.Version)
	}
	return nil
}

func fmtValue(v float64) string {
	switch {
	case math.IsNaN(v):
		return "-"
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	default:
		return fmt.Sprintf("%.2f", v)
	}
}

// WriteJSON writes results.json into dir.
func WriteJSON(dir string, res *Results) error {
	data, err := json.MarshalIndent(res, "", "  ")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, "results.json"), append(data, '\n'), 0o644)
}

// WriteChart draws results.png into dir: for each workload, a horizontal
// bar per ratio (Flotilla over each containerd), a line at 1×, each bar
// labelled with its value.
func WriteChart(dir string, res *Results) error {
	keys, labels, _ := ratioColumns(res)
	p := plot.New()
	p.Title.Text = "Flotilla's median over containerd's, per workload (below 1: Flotilla is faster or smaller)\n" + res.Machine.String()
	p.X.Label.Text = "ratio (×)"
	p.X.Min = 0
	// Top to bottom in the order the table lists them, under an empty row
	// that holds the legend.
	names := make([]string, len(res.Rows)+1)
	for i, r := range res.Rows {
		names[len(res.Rows)-1-i] = r.Name
	}
	p.NominalY(names...)
	width := vg.Points(9)
	maxRatio := 1.0
	for ki, k := range keys {
		values := make(plotter.Values, len(res.Rows))
		var points plotter.XYs
		var texts []string
		for i, r := range res.Rows {
			v := r.Ratios[k]
			if math.IsNaN(v) || math.IsInf(v, 0) {
				v = 0
			}
			values[len(res.Rows)-1-i] = v
			maxRatio = max(maxRatio, v)
			points = append(points, plotter.XY{X: v, Y: float64(len(res.Rows) - 1 - i)})
			texts = append(texts, fmt.Sprintf(" %.2f×", v))
		}
		bars, err := plotter.NewBarChart(values, width)
		if err != nil {
			return err
		}
		bars.Horizontal = true
		bars.LineStyle.Width = 0
		bars.Color = plotutil.Color(ki)
		offset := width * vg.Length(float64(ki)-float64(len(keys)-1)/2)
		bars.Offset = -offset
		p.Add(bars)
		p.Legend.Add(labels[ki], bars)
		lbl, err := plotter.NewLabels(plotter.XYLabels{XYs: points, Labels: texts})
		if err != nil {
			return err
		}
		for i := range lbl.TextStyle {
			lbl.TextStyle[i].Font.Size = vg.Points(7)
			lbl.TextStyle[i].YAlign = -0.5
		}
		lbl.Offset = vg.Point{Y: -offset}
		p.Add(lbl)
	}
	one, err := plotter.NewLine(plotter.XYs{{X: 1, Y: -0.5}, {X: 1, Y: float64(len(res.Rows)) - 0.5}})
	if err != nil {
		return err
	}
	one.Color = color.Black
	one.Dashes = []vg.Length{vg.Points(4), vg.Points(3)}
	p.Add(one)
	p.X.Max = maxRatio * 1.15
	// NominalY sets ticks, not the range: make room for the legend's row.
	p.Y.Min, p.Y.Max = -0.7, float64(len(res.Rows))+0.3
	p.Legend.Top = true
	p.Legend.Left = false
	height := vg.Length((len(res.Rows)+1)*len(keys))*width*1.6 + 3*vg.Inch
	return p.Save(12*vg.Inch, height, filepath.Join(dir, "results.png"))
}
