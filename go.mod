module github.com/podsnapshot/podsnapshot

go 1.26
