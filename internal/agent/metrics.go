package agent

import (
	"github.com/prometheus/client_golang/prometheus"

	"github.com/podsnapshot/podsnapshot/internal/report"
)

// metrics are the agent's Prometheus metrics, fed by the reports it delivers (each
// report is counted once, after it was delivered). Durations in seconds, sizes in bytes.
type metrics struct {
	restoreSeconds    prometheus.Histogram
	downloadSeconds   prometheus.Histogram
	checkpointSeconds prometheus.Histogram
	uploadSeconds     prometheus.Histogram
	storedBytes       prometheus.Counter
	restores          *prometheus.CounterVec // source: cache | storage
	coldStarts        *prometheus.CounterVec // reason: report.Reason*
	checkpoints       *prometheus.CounterVec // result: committed | failed
	restoredStopped   prometheus.Counter
	pending           prometheus.Gauge
	refused           prometheus.Counter
}

// durationBuckets span 50 ms to about 14 minutes.
var durationBuckets = prometheus.ExponentialBuckets(0.05, 2, 15)

func newMetrics(reg prometheus.Registerer) *metrics {
	m := &metrics{
		restoreSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "podsnapshot_restore_duration_seconds",
			Help: "Time from a restored pod's start to its sandbox running again, in seconds.", Buckets: durationBuckets}),
		downloadSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "podsnapshot_restore_download_duration_seconds",
			Help: "Time a restore spent fetching the snapshot from storage, in seconds (0 for node-cache hits).", Buckets: durationBuckets}),
		checkpointSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "podsnapshot_checkpoint_duration_seconds",
			Help: "Time from a checkpoint's trigger to its commit in storage, in seconds.", Buckets: durationBuckets}),
		uploadSeconds: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "podsnapshot_upload_duration_seconds",
			Help: "Time a checkpoint spent compressing and uploading its files, in seconds.", Buckets: durationBuckets}),
		storedBytes: prometheus.NewCounter(prometheus.CounterOpts{Name: "podsnapshot_stored_bytes_total",
			Help: "Bytes of committed snapshots written to storage by this node."}),
		restores: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "podsnapshot_restores_total",
			Help: "Pods restored from a snapshot, by where the snapshot came from (cache: the node cache, a cache hit; storage)."}, []string{"source"}),
		coldStarts: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "podsnapshot_cold_starts_total",
			Help: "Pods matched by a policy that started without a snapshot, by reason."}, []string{"reason"}),
		checkpoints: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "podsnapshot_checkpoints_total",
			Help: "Checkpoints by result (committed, failed)."}, []string{"result"}),
		restoredStopped: prometheus.NewCounter(prometheus.CounterOpts{Name: "podsnapshot_restored_pods_stopped_total",
			Help: "Restored pods stopped because the rest of their memory could not be read from storage after they resumed."}),
		pending: prometheus.NewGauge(prometheus.GaugeOpts{Name: "podsnapshot_reports_pending",
			Help: "Reports of the shims waiting in the spool to be delivered to the API server."}),
		refused: prometheus.NewCounter(prometheus.CounterOpts{Name: "podsnapshot_reports_refused_total",
			Help: "Reports the API server refused for good (set aside in the spool as .refused-*)."}),
	}
	reg.MustRegister(m.restoreSeconds, m.downloadSeconds, m.checkpointSeconds, m.uploadSeconds, m.storedBytes,
		m.restores, m.coldStarts, m.checkpoints, m.restoredStopped, m.pending, m.refused)
	return m
}

func (m *metrics) observe(r report.Report) {
	switch r.Kind {
	case report.Restored:
		source := "storage"
		if r.CacheHit {
			source = "cache"
		}
		m.restores.WithLabelValues(source).Inc()
		if r.Seconds > 0 {
			m.restoreSeconds.Observe(r.Seconds)
		}
		m.downloadSeconds.Observe(r.DownloadSeconds)
	case report.ColdStart:
		m.coldStarts.WithLabelValues(r.Reason).Inc()
	case report.CheckpointCommitted:
		m.checkpoints.WithLabelValues("committed").Inc()
		if r.Seconds > 0 {
			m.checkpointSeconds.Observe(r.Seconds)
		}
		if r.UploadSeconds > 0 {
			m.uploadSeconds.Observe(r.UploadSeconds)
		}
		m.storedBytes.Add(float64(r.StoredBytes))
	case report.CheckpointFailed:
		m.checkpoints.WithLabelValues("failed").Inc()
	case report.RestoredPodStopped:
		m.restoredStopped.Inc()
	}
}
