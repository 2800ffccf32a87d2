// Package alerts evaluates the chart's alerting rules (charts/thinpool-csi/files/alerts.yaml) with
// Prometheus's own rule engine on metrics the real node plugin served in the VM suite: each
// situation raises exactly the alerts it should, after their `for` durations, and no others.
//
// The VM suite writes one scrape per situation to $THINPOOL_SCRAPES (default
// target/vm/runs/kernel-suite/metrics): `healthy.prom`, `full-data.prom` (a pool out of data
// space), `grow-blocked.prom` (a self-growing pool at its maximum), `metadata-near-full.prom` and
// `metadata-full.prom` (a pool whose metadata fills up). Each scrape is held constant
// for two hours, labelled with `node` as the chart's PodMonitor does, and every rule is evaluated
// every 30 seconds over it.
package alerts

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"github.com/prometheus/prometheus/model/labels"
	"github.com/prometheus/prometheus/model/rulefmt"
	"github.com/prometheus/prometheus/promql"
	"github.com/prometheus/prometheus/promql/parser"
	"github.com/prometheus/prometheus/rules"
	"github.com/prometheus/prometheus/util/teststorage"
)

const (
	node     = "vm-node"
	step     = 30 * time.Second
	duration = 2 * time.Hour
)

// What each scrape must raise; every other alert of the chart must stay quiet.
var cases = map[string][]string{
	"healthy":      {},
	"full-data":    {"ThinPoolDataFillCritical", "ThinPoolDataFillHigh", "ThinPoolReadOnly"},
	"grow-blocked": {"ThinPoolAutoExtendBlocked", "ThinPoolDataFillCritical", "ThinPoolDataFillHigh", "ThinPoolReadOnly"},
	// Above the metadata fill limit (80 %), snapshots refused: the warning only.
	"metadata-near-full": {"ThinPoolMetadataFillHigh"},
	// Out of metadata: the pool is read-only.
	"metadata-full": {"ThinPoolMetadataFillCritical", "ThinPoolMetadataFillHigh", "ThinPoolReadOnly"},
}

func scrapes() string {
	if d := os.Getenv("THINPOOL_SCRAPES"); d != "" {
		return d
	}
	return filepath.Join("..", "..", "target", "vm", "runs", "kernel-suite", "metrics")
}

// load puts every sample of a scrape into storage, constant from 0 to `duration`.
func load(t *testing.T, path string) *teststorage.TestStorage {
	f, err := os.Open(path)
	if err != nil {
		t.Fatalf("%v: run the VM suite first (cargo run -p thinpool-e2e -- vm), it writes the scrapes", err)
	}
	defer f.Close()
	p := expfmt.NewTextParser(model.UTF8Validation)
	families, err := p.TextToMetricFamilies(f)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	st := teststorage.New(t)
	app := st.Appender(context.Background())
	series := 0
	for name, fam := range families {
		for _, m := range fam.GetMetric() {
			var v float64
			switch {
			case m.GetGauge() != nil:
				v = m.GetGauge().GetValue()
			case m.GetCounter() != nil:
				v = m.GetCounter().GetValue()
			case m.GetUntyped() != nil:
				v = m.GetUntyped().GetValue()
			default:
				continue // histograms: no alert reads them
			}
			b := labels.NewBuilder(labels.EmptyLabels())
			b.Set(labels.MetricName, name)
			b.Set("node", node)
			for _, l := range m.GetLabel() {
				b.Set(l.GetName(), l.GetValue())
			}
			ls := b.Labels()
			for ts := time.Duration(0); ts <= duration; ts += step {
				if _, err := app.Append(0, ls, ts.Milliseconds(), v); err != nil {
					t.Fatalf("appending %s: %v", ls, err)
				}
			}
			series++
		}
	}
	if err := app.Commit(); err != nil {
		t.Fatal(err)
	}
	if series == 0 {
		t.Fatalf("%s holds no gauge or counter", path)
	}
	return st
}

// alertRules reads the chart's alerting rules.
func alertRules(t *testing.T, p parser.Parser) []*rules.AlertingRule {
	content, err := os.ReadFile(filepath.Join("..", "..", "charts", "thinpool-csi", "files", "alerts.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	groups, errs := rulefmt.Parse(content, false, model.UTF8Validation, p, nil)
	if len(errs) > 0 {
		t.Fatalf("alerts.yaml: %v", errs)
	}
	var out []*rules.AlertingRule
	for _, g := range groups.Groups {
		for _, r := range g.Rules {
			if r.Alert == "" {
				continue
			}
			expr, err := p.ParseExpr(r.Expr)
			if err != nil {
				t.Fatalf("%s: %v", r.Alert, err)
			}
			out = append(out, rules.NewAlertingRule(r.Alert, expr, time.Duration(r.For), time.Duration(r.KeepFiringFor),
				labels.FromMap(r.Labels), labels.FromMap(r.Annotations), labels.EmptyLabels(), "", false, nil))
		}
	}
	if len(out) == 0 {
		t.Fatal("alerts.yaml holds no alerting rule")
	}
	return out
}

func TestChartAlertsOnScrapedMetrics(t *testing.T) {
	p := parser.NewParser(parser.Options{})
	engine := promql.NewEngine(promql.EngineOpts{MaxSamples: 1_000_000, Timeout: time.Minute, LookbackDelta: 5 * time.Minute})
	names := map[string]bool{}
	for _, r := range alertRules(t, p) {
		names[r.Name()] = true
	}
	for c, want := range cases {
		for _, a := range want {
			if !names[a] {
				t.Fatalf("case %s expects %s, which alerts.yaml does not define", c, a)
			}
		}
		t.Run(c, func(t *testing.T) {
			st := load(t, filepath.Join(scrapes(), c+".prom"))
			query := rules.EngineQueryFunc(engine, st)
			var firing []string
			for _, r := range alertRules(t, p) {
				for ts := time.Duration(0); ts <= duration; ts += step {
					if _, err := r.Eval(context.Background(), 0, time.UnixMilli(ts.Milliseconds()), query, nil, 0); err != nil {
						t.Fatalf("%s at %v: %v", r.Name(), ts, err)
					}
				}
				for _, a := range r.ActiveAlerts() {
					if a.State == rules.StateFiring {
						firing = append(firing, r.Name())
						break
					}
				}
			}
			slices.Sort(firing)
			expected := slices.Clone(want)
			slices.Sort(expected)
			t.Logf("%s: firing %v", c, firing)
			if !slices.Equal(firing, expected) {
				t.Errorf("%s: firing %v, expected %v", c, firing, expected)
			}
		})
	}
}
