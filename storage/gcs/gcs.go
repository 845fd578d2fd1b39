// Package gcs is the storage.Store on Cloud Storage (cloud.google.com/go/storage).
//
// Uploads of unknown size are parallel composite uploads: the stream is cut into parts
// of Options.PartSize bytes, Options.Parallelism parts upload at once, and the parts are
// composed into the object, in a tree where there are more than 32 (the compose limit).
// Parts and intermediate objects live under "<prefix>/.podsnapshot-tmp/<upload id>/" and
// are deleted on success, failure and cancellation; what a crash of the process or of the
// store leaves, podsnapshot gc deletes (Store.StaleTemps), as can a lifecycle rule. A
// stream that fits in one part is uploaded in one request.
//
// CRC32C is checked end to end: each part is sent with its CRC32C (the server rejects a
// mismatch), the composed object's CRC32C is checked against the whole stream's, and
// reads check the object's CRC32C at EOF. Every write carries a generation precondition
// (DoesNotExist for new and temporary objects, GenerationMatch to replace), which makes
// retries safe; retries only happen where that holds. Downloads of more than one read
// chunk are parallel ranged reads pinned to one generation.
//
// The client honours STORAGE_EMULATOR_HOST (e.g. fake-gcs-server). Importing the package
// registers the "gs" URL scheme with storage.Open.
package gcs

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"

	gcs "cloud.google.com/go/storage"
	"github.com/podsnapshot/podsnapshot/storage"
	"github.com/sirupsen/logrus"
	"google.golang.org/api/googleapi"
	"google.golang.org/api/iterator"
	"google.golang.org/api/option"
)

func init() {
	storage.Register("gs", func(ctx context.Context, u *url.URL, o storage.Options) (storage.Store, error) {
		if u.Host == "" {
			return nil, fmt.Errorf("open store %s: no bucket: want gs://bucket/prefix", u)
		}
		var copts []option.ClientOption
		if o.Endpoint != "" {
			copts = append(copts, option.WithEndpoint(o.Endpoint))
		}
		if o.TokenSource != nil {
			if os.Getenv("STORAGE_EMULATOR_HOST") != "" {
				// The client sends no credentials to an emulator: a store that must act
				// as one identity would act as none.
				return nil, fmt.Errorf("open store %s: a token source is set, and STORAGE_EMULATOR_HOST would drop it; point the store at the endpoint instead", u)
			}
			copts = append(copts, option.WithTokenSource(o.TokenSource))
		}
		client, err := gcs.NewClient(ctx, copts...)
		if err != nil {
			return nil, fmt.Errorf("open store %s: %w", u, err)
		}
		s := newStore(client, u.Host, u.Path, o)
		s.ownClient = true
		return s, nil
	})
}

// Store is a storage.Store on a bucket prefix.
type Store struct {
	client    *gcs.Client
	ownClient bool
	bucket    *gcs.BucketHandle
	name      string // bucket
	prefix    string // "" or "a/b", no leading or trailing slash
	o         storage.Options
	log       logrus.FieldLogger
	parts     *bufPool
}

var _ storage.Store = (*Store)(nil)

// New returns the store on gs://bucket/prefix using client, which the caller keeps
// owning (Close does not close it).
func New(client *gcs.Client, bucket, prefix string, opts ...storage.Option) *Store {
	return newStore(client, bucket, prefix, storage.NewOptions(opts...))
}

func newStore(client *gcs.Client, bucket, prefix string, o storage.Options) *Store {
	return &Store{
		client: client,
		bucket: client.Bucket(bucket),
		name:   bucket,
		prefix: strings.Trim(prefix, "/"),
		o:      o,
		log:    o.Log.WithField("store", "gs://"+bucket+"/"+strings.Trim(prefix, "/")),
		parts:  newBufPool(o.Parallelism+1, int(o.PartSize)),
	}
}

// URL returns "gs://bucket/prefix/name".
func (s *Store) URL(name string) string {
	return "gs://" + s.name + "/" + s.key(name)
}

// key is the bucket object name of a store name.
func (s *Store) key(name string) string {
	switch {
	case s.prefix == "":
		return name
	case name == "":
		return s.prefix
	}
	return s.prefix + "/" + name
}

func (s *Store) check(name string) error {
	if err := storage.CheckName(name); err != nil {
		return fmt.Errorf("%s: %w", s.URL(name), err)
	}
	return nil
}

// Stat returns the object's size, CRC32C and update time.
func (s *Store) Stat(ctx context.Context, name string) (storage.ObjectInfo, error) {
	if err := s.check(name); err != nil {
		return storage.ObjectInfo{}, err
	}
	a, err := s.bucket.Object(s.key(name)).Attrs(ctx)
	if err != nil {
		return storage.ObjectInfo{}, s.err(name, err)
	}
	return info(name, a), nil
}

func info(name string, a *gcs.ObjectAttrs) storage.ObjectInfo {
	return storage.ObjectInfo{Name: name, Size: a.Size, CRC32C: a.CRC32C, HasCRC32C: true, Updated: a.Updated}
}

// List lists the objects under prefix, hiding temporary ones.
func (s *Store) List(ctx context.Context, prefix string) ([]storage.ObjectInfo, error) {
	q := &gcs.Query{Prefix: s.key(prefix)}
	if s.prefix != "" && prefix == "" {
		q.Prefix = s.prefix + "/"
	}
	if err := q.SetAttrSelection([]string{"Name", "Size", "CRC32C", "Updated"}); err != nil {
		return nil, err
	}
	var out []storage.ObjectInfo
	it := s.bucket.Objects(ctx, q)
	for {
		a, err := it.Next()
		if errors.Is(err, iterator.Done) {
			break
		}
		if err != nil {
			return nil, fmt.Errorf("list %s*: %w", s.URL(prefix), err)
		}
		name := a.Name
		if s.prefix != "" {
			name = strings.TrimPrefix(name, s.prefix+"/")
		}
		if storage.IsTemp(name) || name == "" {
			continue
		}
		out = append(out, info(name, a))
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// Delete removes the object.
func (s *Store) Delete(ctx context.Context, name string) error {
	if err := s.check(name); err != nil {
		return err
	}
	if err := s.bucket.Object(s.key(name)).Delete(ctx); err != nil {
		return s.err(name, err)
	}
	return nil
}

// Close closes the client if the store opened it.
func (s *Store) Close() error {
	if s.ownClient {
		return s.client.Close()
	}
	return nil
}

// err names the object and maps a missing object to storage.ErrNotFound.
func (s *Store) err(name string, err error) error {
	if errors.Is(err, gcs.ErrObjectNotExist) || httpCode(err) == http.StatusNotFound {
		return storage.NotFound(s.URL(name))
	}
	return fmt.Errorf("%s: %w", s.URL(name), err)
}

func httpCode(err error) int {
	var e *googleapi.Error
	if errors.As(err, &e) {
		return e.Code
	}
	return 0
}

// preconditionFailed reports a failed generation precondition (HTTP 412).
func preconditionFailed(err error) bool { return httpCode(err) == http.StatusPreconditionFailed }

// GetRange reads length bytes at off (length < 0: to the end).
func (s *Store) GetRange(ctx context.Context, name string, off, length int64) (io.ReadCloser, error) {
	if err := s.check(name); err != nil {
		return nil, err
	}
	obj := s.bucket.Object(s.key(name))
	a, err := obj.Attrs(ctx)
	if err != nil {
		return nil, s.err(name, err)
	}
	if off < 0 || off > a.Size {
		return nil, fmt.Errorf("%s: offset %d of an object of %d bytes: %w", s.URL(name), off, a.Size, storage.ErrOutOfRange)
	}
	if length < 0 || off+length > a.Size {
		length = a.Size - off
	}
	if length == 0 {
		return io.NopCloser(strings.NewReader("")), nil
	}
	r, err := obj.Generation(a.Generation).NewRangeReader(ctx, off, length)
	if err != nil {
		return nil, s.err(name, err)
	}
	return r, nil
}
