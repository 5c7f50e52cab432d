#!/usr/bin/env bash
# The pinned wheels (Python 3.12, manylinux x86_64) that the GPU machine lacks, for the learning benchmark and
# the environment service: sourced by gpu_stage.sh (all of them) and gpu_bid_probes.sh (the few a probe
# imports), so both stage the same versions. Why these versions: gpu_stage.sh's header.
# shellcheck disable=SC2034  # used by the scripts that source this file
WHEELS=(
  trl==1.16.0 datasets==5.2.0 dill==0.4.1 multiprocess==0.70.19 sniffio==1.3.1 fastapi==0.165.0
  starlette==1.10.0 uvicorn==0.54.0 pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0
  typing-inspection==0.4.5 typing-extensions==4.16.0 playwright==1.44.0 greenlet==3.0.3 pyee==11.1.0
  browsergym-core==0.14.3 browsergym-miniwob==0.14.3 miniwob==1.1.0 gymnasium==1.4.0
  farama-notifications==0.0.6 beautifulsoup4==4.15.0 soupsieve==4.1.3
  # fastapi 0.165 imports opentelemetry's API at start: without it serve-env exits at once (seen on the GPU
  # machine when these three travelled only with vLLM).
  opentelemetry-api==1.45.2 importlib-metadata==10.2.0 zipp==4.1.2
)
