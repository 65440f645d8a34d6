# The distill_proto library: C++ messages and gRPC stubs generated from proto/ (the same .proto
# the server and the Python stubs use), built against Debian's gRPC packages:
#   apt-get install cmake g++ pkg-config libgrpc++-dev protobuf-compiler-grpc libprotobuf-dev protobuf-compiler
# Included by client/cpp (the examples) and client/c (libdistill).
#
# The C++ messages use protobuf's lite runtime (a copy of the .proto with optimize_for =
# LITE_RUNTIME, made at configure time): full-runtime messages register their .proto in the
# process-wide descriptor pool of the shared libprotobuf, and a second binary registering the
# same file aborts the process ("File already exists in database"). A DAW that loads the
# plug-in's CLAP and VST3 builds, or a game with libdistill and the plug-in, holds two copies.
# Nothing here needs reflection, so lite messages, which register nothing, are enough.
find_package(PkgConfig REQUIRED)
pkg_check_modules(GRPCPP REQUIRED IMPORTED_TARGET grpc++ protobuf-lite)
find_program(PROTOC protoc REQUIRED)
find_program(GRPC_CPP_PLUGIN grpc_cpp_plugin REQUIRED)

set(DISTILL_PROTO_SOURCE "${CMAKE_CURRENT_LIST_DIR}/../../proto")
set(DISTILL_PROTO_FILE "distill_serve/v1/distill.proto")
set(DISTILL_PROTO_ROOT "${CMAKE_CURRENT_BINARY_DIR}/proto-lite")
set_property(DIRECTORY APPEND PROPERTY CMAKE_CONFIGURE_DEPENDS
             "${DISTILL_PROTO_SOURCE}/${DISTILL_PROTO_FILE}")
file(READ "${DISTILL_PROTO_SOURCE}/${DISTILL_PROTO_FILE}" _distill_proto)
string(REPLACE "package distill_serve.v1;"
       "package distill_serve.v1;\noption optimize_for = LITE_RUNTIME;"
       _distill_proto "${_distill_proto}")
file(WRITE "${DISTILL_PROTO_ROOT}/${DISTILL_PROTO_FILE}.new" "${_distill_proto}")
# Rewritten only when it changes, so that an unchanged .proto rebuilds nothing.
file(COPY_FILE "${DISTILL_PROTO_ROOT}/${DISTILL_PROTO_FILE}.new"
     "${DISTILL_PROTO_ROOT}/${DISTILL_PROTO_FILE}" ONLY_IF_DIFFERENT)
set(DISTILL_PROTO_GEN "${CMAKE_CURRENT_BINARY_DIR}/gen")
set(DISTILL_PROTO_SRCS
    "${DISTILL_PROTO_GEN}/distill_serve/v1/distill.pb.cc"
    "${DISTILL_PROTO_GEN}/distill_serve/v1/distill.grpc.pb.cc")
file(MAKE_DIRECTORY "${DISTILL_PROTO_GEN}")
add_custom_command(
  OUTPUT ${DISTILL_PROTO_SRCS}
  COMMAND ${PROTOC} -I "${DISTILL_PROTO_ROOT}" --cpp_out "${DISTILL_PROTO_GEN}"
          --grpc_out "${DISTILL_PROTO_GEN}" --plugin=protoc-gen-grpc=${GRPC_CPP_PLUGIN}
          "${DISTILL_PROTO_FILE}"
  DEPENDS "${DISTILL_PROTO_ROOT}/${DISTILL_PROTO_FILE}"
  COMMENT "protoc ${DISTILL_PROTO_FILE}")

add_library(distill_proto STATIC ${DISTILL_PROTO_SRCS})
# Position-independent, so that a shared library (libdistill) can link it in.
set_target_properties(distill_proto PROPERTIES POSITION_INDEPENDENT_CODE ON)
target_include_directories(distill_proto PUBLIC "${DISTILL_PROTO_GEN}")
target_link_libraries(distill_proto PUBLIC PkgConfig::GRPCPP)
