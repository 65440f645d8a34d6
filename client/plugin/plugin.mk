# One DPF build of the Distill plug-in (run through Makefile: make -C client/plugin).
# NO_STATE=1 builds without plug-in state (the LV2 build).

NAME = distill
FILES_DSP = DistillPlugin.cpp

DPF_PATH ?= /usr/share/dpf
DPF_BUILD_DIR ?= build/dpf
DPF_TARGET_DIR ?= bin
CLIENT_BUILD ?= build/client

include $(DPF_PATH)/Makefile.plugins.mk

BUILD_CXX_FLAGS += -std=gnu++17 -I../c/include
# DPF compiles and links with -ffast-math, and gcc 12 then links crtfastmath.o into the shared
# object: its constructor sets flush-to-zero and denormals-are-zero in whatever thread of the
# host loads the plug-in (a DAW's GUI thread, a Python test process). The plug-in only copies
# audio from libdistill's ring; it needs no fast math, and a host's float mode is not ours.
BUILD_CXX_FLAGS += -fno-fast-math
ifeq ($(NO_STATE),1)
BUILD_CXX_FLAGS += -DDISTILL_NO_STATE
endif
LIBDISTILL = $(CLIENT_BUILD)/c/libdistill_static.a $(CLIENT_BUILD)/libdistill_proto.a
LINK_FLAGS += $(LIBDISTILL) $(shell pkg-config --libs grpc++ protobuf-lite) -lpthread

TTL_GENERATOR = $(DPF_BUILD_DIR)/lv2_ttl_generator

all: clap vst3

$(OBJS_DSP): $(CLIENT_BUILD)/libdistill.stamp

# One stamp for both archives (a rule with two targets would run twice under make -j).
$(CLIENT_BUILD)/libdistill.stamp: ../c/src/*.cc ../c/src/*.h ../c/include/distill.h ../../proto/distill_serve/v1/distill.proto
	cmake -S .. -B $(CLIENT_BUILD) >/dev/null
	cmake --build $(CLIENT_BUILD) --target distill_static -j2
	touch $@

# The LV2 bundle's manifest.ttl and distill_dsp.ttl, generated from the built plug-in.
$(TTL_GENERATOR): $(DPF_PATH)/utils/lv2-ttl-generator/lv2_ttl_generator.c
	@mkdir -p $(DPF_BUILD_DIR)
	$(CC) $< -o $@ -ldl

lv2_ttl: $(lv2_dsp) $(TTL_GENERATOR)
	cd $(TARGET_DIR)/$(NAME).lv2 && $(abspath $(TTL_GENERATOR)) ./$(NAME)_dsp.so

# The headless CLAP test host (tests/test_plugin.py).
clap_host: $(DPF_BUILD_DIR)/clap_host
$(DPF_BUILD_DIR)/clap_host: tests/clap_host.c ../c/tests/pacing.h
	@mkdir -p $(DPF_BUILD_DIR)
	$(CC) -O2 -Wall -Wextra -I$(DPF_PATH)/distrho/src -I../c/tests $< -o $@ -ldl -lm

.PHONY: all lv2_ttl clap_host
