package gcs

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"hash/crc32"
	"io"
	"sync"
	"time"

	gcs "cloud.google.com/go/storage"
	"github.com/podsnapshot/podsnapshot/storage"
	"golang.org/x/sync/errgroup"
	"google.golang.org/api/iterator"
)

// maxComposeSources is Cloud Storage's limit of sources per compose request.
const maxComposeSources = 32

// uploadKey is the metadata key holding the id of the upload that wrote an object, so a
// retried request that meets a failed precondition can tell its own earlier success.
const uploadKey = "podsnapshot-upload"

// cleanupTimeout bounds deleting an upload's temporary objects.
const cleanupTimeout = 2 * time.Minute

// Put uploads r to name, replacing any object there.
func (s *Store) Put(ctx context.Context, name string, r io.Reader) (storage.ObjectInfo, error) {
	return s.put(ctx, name, r, false)
}

// PutIfAbsent uploads r to name unless it exists: the object is created with a
// DoesNotExist precondition, so of concurrent writers exactly one wins.
func (s *Store) PutIfAbsent(ctx context.Context, name string, r io.Reader) (storage.ObjectInfo, error) {
	return s.put(ctx, name, r, true)
}

// upload is one Put in progress.
type upload struct {
	s        *Store
	name     string
	key      string // bucket object name
	url      string
	ifAbsent bool
	id       string
	meta     map[string]string
}

func (s *Store) put(ctx context.Context, name string, r io.Reader, ifAbsent bool) (storage.ObjectInfo, error) {
	if err := s.check(name); err != nil {
		return storage.ObjectInfo{}, err
	}
	id := newID()
	u := &upload{s: s, name: name, key: s.key(name), url: s.URL(name), ifAbsent: ifAbsent, id: id,
		meta: map[string]string{uploadKey: id}}
	if ifAbsent {
		// Fail before reading the stream; the precondition on the final write decides races.
		_, err := s.bucket.Object(u.key).Attrs(ctx)
		if err == nil {
			return storage.ObjectInfo{}, storage.Exists(u.url)
		}
		if !errors.Is(err, gcs.ErrObjectNotExist) {
			return storage.ObjectInfo{}, s.err(name, err)
		}
	}
	s.parts.begin()
	defer s.parts.end()
	buf, err := s.parts.get(ctx)
	if err != nil {
		return storage.ObjectInfo{}, fmt.Errorf("%s: %w", u.url, err)
	}
	n, eof, err := fill(r, buf)
	if err != nil {
		s.parts.put(buf)
		return storage.ObjectInfo{}, fmt.Errorf("%s: read: %w", u.url, err)
	}
	if eof {
		defer s.parts.put(buf)
		return u.single(ctx, buf[:n])
	}
	return u.composite(ctx, r, buf)
}

// fill reads r until buf is full or r ends (eof); n is the bytes read.
func fill(r io.Reader, buf []byte) (n int, eof bool, err error) {
	n, err = io.ReadFull(r, buf)
	switch err {
	case nil:
		return n, false, nil
	case io.EOF, io.ErrUnexpectedEOF:
		return n, true, nil
	}
	return n, false, err
}

// single uploads data to the final name in one request.
func (u *upload) single(ctx context.Context, data []byte) (storage.ObjectInfo, error) {
	crc := crc32.Checksum(data, storage.Castagnoli)
	return u.commit(ctx, func(ctx context.Context, cond gcs.Conditions) (*gcs.ObjectAttrs, error) {
		return u.s.write(ctx, u.key, cond, data, crc, u.meta)
	}, crc)
}

// commit writes the final object with do under a generation precondition: DoesNotExist
// for PutIfAbsent, otherwise the generation found there (a concurrent writer in between
// makes it try again; the last writer wins, as in Cloud Storage).
func (u *upload) commit(ctx context.Context, do func(context.Context, gcs.Conditions) (*gcs.ObjectAttrs, error), crc uint32) (storage.ObjectInfo, error) {
	obj := u.s.bucket.Object(u.key)
	for attempt := 1; ; attempt++ {
		cond := gcs.Conditions{DoesNotExist: true}
		if !u.ifAbsent {
			a, err := obj.Attrs(ctx)
			switch {
			case err == nil:
				cond = gcs.Conditions{GenerationMatch: a.Generation}
			case !errors.Is(err, gcs.ErrObjectNotExist):
				return storage.ObjectInfo{}, u.s.err(u.name, err)
			}
		}
		a, err := do(ctx, cond)
		switch {
		case err == nil:
		case preconditionFailed(err) && u.ifAbsent:
			return storage.ObjectInfo{}, storage.Exists(u.url)
		case preconditionFailed(err) && attempt < 3:
			continue
		default:
			return storage.ObjectInfo{}, u.s.err(u.name, err)
		}
		if a.CRC32C != crc {
			derr := obj.If(gcs.Conditions{GenerationMatch: a.Generation}).Delete(context.WithoutCancel(ctx))
			return storage.ObjectInfo{}, errors.Join(
				storage.Corruptf(u.url, "crc32c mismatch after upload: got %d, want %d", a.CRC32C, crc), derr)
		}
		return info(u.name, a), nil
	}
}

// write uploads data to key in one request under cond, sending its CRC32C for the server
// to check. It retries: cond makes that safe, and a failed precondition on a retry is
// recognised as an earlier attempt's success by the upload id in the metadata.
func (s *Store) write(ctx context.Context, key string, cond gcs.Conditions, data []byte, crc uint32, meta map[string]string) (*gcs.ObjectAttrs, error) {
	var attrs *gcs.ObjectAttrs
	err := s.retry(ctx, "upload "+key, func(ctx context.Context) error {
		ctx, cancel := context.WithCancel(ctx)
		defer cancel()
		w := s.bucket.Object(key).If(cond).NewWriter(ctx)
		w.ChunkSize = 0 // one request straight from data; no second buffer
		w.CRC32C, w.SendCRC32C = crc, true
		w.ContentType = "application/octet-stream"
		w.Metadata = meta
		if _, err := w.Write(data); err != nil {
			cancel()
			w.Close()
			return err
		}
		if err := w.Close(); err != nil {
			if a := s.landed(ctx, key, meta, err); a != nil {
				attrs = a
				return nil
			}
			return err
		}
		attrs = w.Attrs()
		return nil
	})
	return attrs, err
}

// landed returns the attrs of key if err is a failed precondition and the object there
// was written by the upload meta names (an earlier attempt whose reply was lost).
func (s *Store) landed(ctx context.Context, key string, meta map[string]string, err error) *gcs.ObjectAttrs {
	if !preconditionFailed(err) {
		return nil
	}
	a, aerr := s.bucket.Object(key).Attrs(ctx)
	if aerr != nil || a.Metadata[uploadKey] == "" || a.Metadata[uploadKey] != meta[uploadKey] {
		return nil
	}
	return a
}

// composite uploads the stream as parts, first already filled, and composes them.
func (u *upload) composite(ctx context.Context, r io.Reader, first []byte) (info storage.ObjectInfo, err error) {
	s := u.s
	temps := &tempSet{gens: map[string]int64{}}
	defer func() {
		if cerr := u.cleanup(ctx, temps); cerr != nil {
			if err != nil {
				err = &cleanupFailed{err: err, cleanup: cerr}
			} else {
				s.log.WithError(cerr).Warn("deleting temporary objects of a finished upload")
			}
		}
	}()

	g, gctx := errgroup.WithContext(ctx)
	var (
		crc   uint32
		parts []string
		buf   = first
		n     = len(first)
		eof   bool
		rerr  error
	)
	for {
		data := buf[:n]
		crc = crc32.Update(crc, storage.Castagnoli, data)
		key := u.tempKey(fmt.Sprintf("p%05d", len(parts)))
		parts = append(parts, key)
		temps.add(key)
		b := buf
		g.Go(func() error {
			defer s.parts.put(b)
			a, err := s.write(gctx, key, gcs.Conditions{DoesNotExist: true}, data,
				crc32.Checksum(data, storage.Castagnoli), u.meta)
			if err != nil {
				return fmt.Errorf("part %s: %w", key, err)
			}
			temps.setGen(key, a.Generation)
			return nil
		})
		if eof {
			break
		}
		var gerr error
		if buf, gerr = s.parts.get(gctx); gerr != nil {
			break // a part failed or ctx ended; g.Wait says which
		}
		if n, eof, rerr = fill(r, buf); rerr != nil || n == 0 {
			s.parts.put(buf)
			break
		}
	}
	werr := g.Wait()
	switch {
	case rerr != nil:
		return info, fmt.Errorf("%s: read: %w", u.url, rerr)
	case werr != nil:
		return info, fmt.Errorf("%s: %w", u.url, werr)
	case ctx.Err() != nil:
		return info, fmt.Errorf("%s: %w", u.url, ctx.Err())
	}
	return u.commit(ctx, func(ctx context.Context, cond gcs.Conditions) (*gcs.ObjectAttrs, error) {
		return u.composeTree(ctx, parts, cond, crc, temps)
	}, crc)
}

// composeTree composes srcs, in order, into the final object: while there are more than
// 32 it composes groups of 32 into intermediate temporary objects, level by level.
func (u *upload) composeTree(ctx context.Context, srcs []string, cond gcs.Conditions, crc uint32, temps *tempSet) (*gcs.ObjectAttrs, error) {
	s := u.s
	for level := 1; len(srcs) > maxComposeSources; level++ {
		next := make([]string, 0, (len(srcs)+maxComposeSources-1)/maxComposeSources)
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(s.o.Parallelism)
		for i := 0; i < len(srcs); i += maxComposeSources {
			group := srcs[i:min(i+maxComposeSources, len(srcs))]
			dst := u.tempKey(fmt.Sprintf("c%d-%05d", level, len(next)))
			next = append(next, dst)
			temps.add(dst)
			g.Go(func() error {
				a, err := s.compose(gctx, dst, gcs.Conditions{DoesNotExist: true}, group, nil, u.meta)
				if err != nil {
					return fmt.Errorf("compose %s: %w", dst, err)
				}
				temps.setGen(dst, a.Generation)
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			return nil, err
		}
		srcs = next
	}
	return s.compose(ctx, u.key, cond, srcs, &crc, u.meta)
}

// compose concatenates srcs into dst under cond. With crc, the server rejects a result
// whose CRC32C differs. The client retries it: cond makes compose idempotent.
func (s *Store) compose(ctx context.Context, dst string, cond gcs.Conditions, srcs []string, crc *uint32, meta map[string]string) (*gcs.ObjectAttrs, error) {
	handles := make([]*gcs.ObjectHandle, len(srcs))
	for i, k := range srcs {
		handles[i] = s.bucket.Object(k)
	}
	c := s.bucket.Object(dst).If(cond).ComposerFrom(handles...)
	c.ContentType = "application/octet-stream"
	c.Metadata = meta
	if crc != nil {
		c.CRC32C, c.SendCRC32C = *crc, true
	}
	a, err := c.Run(ctx)
	if err != nil {
		if a := s.landed(ctx, dst, meta, err); a != nil {
			return a, nil
		}
		return nil, err
	}
	return a, nil
}

// tempKey names a temporary object of this upload.
func (u *upload) tempKey(leaf string) string {
	return u.s.key(storage.TempPrefix + "/" + u.id + "/" + leaf)
}

// cleanup deletes the upload's temporary objects, also when ctx has ended. A request
// cancelled in flight may still create its object on the server after the client gave
// up, so when some write ended in doubt it then sweeps the upload's temporary prefix a
// few times, at growing intervals. What a crash of this process, or of the store, leaves
// is deleted by podsnapshot gc (StaleTemps), or by a lifecycle rule on TempPrefix.
func (u *upload) cleanup(ctx context.Context, temps *tempSet) error {
	ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), cleanupTimeout)
	defer cancel()
	all := temps.all()
	err := u.deleteAll(ctx, all)
	inDoubt := false
	for _, gen := range all {
		inDoubt = inDoubt || gen == 0
	}
	for _, wait := range []time.Duration{100 * time.Millisecond, 400 * time.Millisecond, time.Second} {
		if !inDoubt || err != nil {
			break
		}
		time.Sleep(wait)
		var left map[string]int64
		if left, err = u.listTemps(ctx); err == nil {
			err = u.deleteAll(ctx, left)
		}
	}
	return err
}

// listTemps lists the objects under the upload's temporary prefix with their generations.
func (u *upload) listTemps(ctx context.Context) (map[string]int64, error) {
	q := &gcs.Query{Prefix: u.tempKey("")}
	if err := q.SetAttrSelection([]string{"Name", "Generation"}); err != nil {
		return nil, err
	}
	left := map[string]int64{}
	it := u.s.bucket.Objects(ctx, q)
	for {
		a, err := it.Next()
		if errors.Is(err, iterator.Done) {
			return left, nil
		}
		if err != nil {
			return nil, fmt.Errorf("list temporary objects %s: %w", u.s.URL(storage.TempPrefix+"/"+u.id), err)
		}
		left[a.Name] = a.Generation
	}
}

// deleteAll deletes objects, by generation where known (then the client retries).
func (u *upload) deleteAll(ctx context.Context, objs map[string]int64) error {
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(u.s.o.Parallelism)
	var mu sync.Mutex
	var errs []error
	for key, gen := range objs {
		g.Go(func() error {
			obj := u.s.bucket.Object(key)
			if gen != 0 {
				obj = obj.If(gcs.Conditions{GenerationMatch: gen}) // idempotent: retried
			}
			if err := obj.Delete(gctx); err != nil && !errors.Is(err, gcs.ErrObjectNotExist) {
				mu.Lock()
				errs = append(errs, fmt.Errorf("delete temporary gs://%s/%s: %w", u.s.name, key, err))
				mu.Unlock()
			}
			return nil
		})
	}
	g.Wait()
	return summarize(errs, "deletes of temporary objects failed")
}

// tempSet is the temporary objects an upload created or may have created, with their
// generations where known.
type tempSet struct {
	mu   sync.Mutex
	gens map[string]int64
}

func (t *tempSet) add(key string) {
	t.mu.Lock()
	t.gens[key] = 0
	t.mu.Unlock()
}

func (t *tempSet) setGen(key string, gen int64) {
	t.mu.Lock()
	t.gens[key] = gen
	t.mu.Unlock()
}

func (t *tempSet) all() map[string]int64 {
	t.mu.Lock()
	defer t.mu.Unlock()
	m := make(map[string]int64, len(t.gens))
	for k, v := range t.gens {
		m[k] = v
	}
	return m
}

func newID() string {
	var b [12]byte
	rand.Read(b[:])
	return hex.EncodeToString(b[:])
}
