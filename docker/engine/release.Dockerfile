# One engine:<version> image: the application image with the release baked in. Built by
# scripts/docker/build-images.sh with no build context:
#   docker build --build-arg ENGINE_RELEASE=2.3.1 -t engine:2.3.1 - < docker/engine/release.Dockerfile
FROM backout-engine-app:latest
ARG ENGINE_RELEASE
ARG ENGINE_MIGRATION_HEAD=""
ENV ENGINE_RELEASE=${ENGINE_RELEASE}
LABEL org.opencontainers.image.title="engine" \
      org.opencontainers.image.version="${ENGINE_RELEASE}" \
      dev.backout.engine.release="${ENGINE_RELEASE}" \
      dev.backout.engine.migration-head="${ENGINE_MIGRATION_HEAD}"
