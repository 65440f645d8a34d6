// What DPF needs to know about the Distill instrument at compile time (see DistillPlugin.cpp).
#ifndef DISTRHO_PLUGIN_INFO_H_INCLUDED
#define DISTRHO_PLUGIN_INFO_H_INCLUDED

#define DISTRHO_PLUGIN_BRAND "distill-serve"
#define DISTRHO_PLUGIN_NAME "Distill"
#define DISTRHO_PLUGIN_URI "urn:distill-serve:distill"
#define DISTRHO_PLUGIN_CLAP_ID "org.distill-serve.distill"

#define DISTRHO_PLUGIN_HAS_UI 0
#define DISTRHO_PLUGIN_IS_RT_SAFE 1
// An instrument (a generator: no MIDI, no audio in; see the categories below).
#define DISTRHO_PLUGIN_IS_SYNTH 0
#define DISTRHO_PLUGIN_WANT_MIDI_INPUT 0
#ifdef DISTILL_NO_STATE
// The LV2 build has one audio input, ignored: file hosts such as lv2apply only run plug-ins
// whose audio inputs they can feed from a file.
#define DISTRHO_PLUGIN_NUM_INPUTS 1
#else
#define DISTRHO_PLUGIN_NUM_INPUTS 0
#endif
#define DISTRHO_PLUGIN_NUM_OUTPUTS 2
#define DISTRHO_PLUGIN_WANT_LATENCY 1
// The host's transport: the plug-in plays the timeline at the host's position (CLAP, VST3;
// the LV2 build, for file hosts such as lv2apply that support no time port, counts its own).
#ifdef DISTILL_NO_STATE
#define DISTRHO_PLUGIN_WANT_TIMEPOS 0
#else
#define DISTRHO_PLUGIN_WANT_TIMEPOS 1
#endif
// The server address and token are plug-in state, except in the LV2 build (DISTILL_NO_STATE):
// LV2 state needs atom ports, which simple hosts such as lv2apply cannot connect; there they
// come from $DISTILL_SERVER and $DISTILL_TOKEN.
#ifdef DISTILL_NO_STATE
#define DISTRHO_PLUGIN_WANT_STATE 0
#define DISTRHO_PLUGIN_WANT_FULL_STATE 0
#else
#define DISTRHO_PLUGIN_WANT_STATE 1
#define DISTRHO_PLUGIN_WANT_FULL_STATE 1
#endif

#define DISTRHO_PLUGIN_CLAP_FEATURES "instrument", "synthesizer", "stereo"
#define DISTRHO_PLUGIN_VST3_CATEGORIES "Instrument|Synth|Stereo"
#define DISTRHO_PLUGIN_LV2_CATEGORY "lv2:InstrumentPlugin"

#endif
